"""The ``lkseg`` command-line interface: one module per subcommand, registered in :mod:`lkseg.cli.main`."""
