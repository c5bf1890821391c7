"""Model sources and native ports: hub ids, local folders and official checkpoint files (converted by key
mapping), our ports of TinyViT, Semantic-SAM and RAM, and tiny random models for tests."""
