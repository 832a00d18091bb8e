"""The federated round: the protocol types (what a client sends, what the server sees), the models, the bundled data, recorded updates and training."""
