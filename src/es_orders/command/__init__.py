"""The command service: validated commands, optimistic concurrency, and the simulator."""

from es_orders.command.api import create_command_app
from es_orders.command.handler import Accepted, CommandHandler

__all__ = ["Accepted", "CommandHandler", "create_command_app"]
