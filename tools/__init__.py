"""Developer tools: code generation (gen.py) and the soak (soak/); not part of the vnet package."""
