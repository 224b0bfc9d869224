"""fedbridge: federated learning across clients whose data differ in quality."""

__version__ = "0.1.0"
