"""``python -m es_orders``: the same CLI as ``es-orders`` (``es-orders up`` runs its parts so)."""

from es_orders.cli import main

main()
