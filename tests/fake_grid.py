"""A Flower Grid in process, for the ServerApp's tests: the nodes answer at once, with no SuperLink."""

from uuid import uuid4


class Grid:
    """Each pushed message gets an id, as the SuperLink would assign it, and its reply is
    `answer(message)` (None: the node is silent); pulling returns the replies that came.
    A test's grid says how its nodes answer."""

    def __init__(self, nodes: list[int]):
        self.nodes, self.replies = list(nodes), {}

    def get_node_ids(self):
        return list(self.nodes)

    def answer(self, message):
        raise NotImplementedError("a test's grid says how its nodes answer")

    def push_messages(self, messages):
        ids = []
        for m in messages:
            m.metadata.__dict__["_message_id"] = str(uuid4())
            ids.append(m.metadata.message_id)
            if (reply := self.answer(m)) is not None:
                self.replies[m.metadata.message_id] = reply
        return ids

    def pull_messages(self, ids):
        return [self.replies.pop(i) for i in ids if i in self.replies]
