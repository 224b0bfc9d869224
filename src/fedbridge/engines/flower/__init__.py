"""fedbridge on Flower: the same experiment as the simulation engine, one process per client.

server_app.py and client_app.py are a Flower App (Message API) that import fedbridge's own local
training, aggregation and evaluation; deploy.py starts a SuperLink and SuperNodes on this machine
and runs a study through them. The App's Flower config is app/pyproject.toml (for `flwr run`).
"""
