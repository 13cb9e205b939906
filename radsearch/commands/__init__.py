"""The ``radsearch`` command line: one module per command group, wired together in `main`.

Each module registers its subcommands on the parser and holds what they do, here and through a
radsearch server, and the output both share. Modules are imported by the parser: heavy imports
stay inside the functions, so the light commands start without torch.
"""
