"""A live console of every WebSocket session on every node, for Django staff.

Each server process publishes a snapshot of its sessions and counters every
``CONSOLE_INTERVAL`` seconds (:mod:`.snapshot`); the views read them back
(:mod:`.store`), from Redis when ``REGISTRY_URL`` is set, else from the process
serving the page. See docs/console.md.
"""
