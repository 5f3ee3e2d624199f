"""No agents: what a worker started with a module that defines none has."""
