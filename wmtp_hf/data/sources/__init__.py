"""One module per external data source (records -> unified rows, and its `SOURCE`); the registry that
names them all is `wmtp_hf.data.registry`."""
