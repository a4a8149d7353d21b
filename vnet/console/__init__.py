"""The interactive console: prompt_toolkit over the node's command language."""
