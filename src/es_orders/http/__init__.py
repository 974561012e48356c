"""What both HTTP services share: RFC 9457 problem details and their handlers."""

from es_orders.http.problems import (
    ABOUT_BLANK,
    PROBLEM_MEDIA_TYPE,
    PROBLEM_TYPE_BASE,
    VALIDATION_ERROR_TYPE,
    ProblemError,
    ProblemModel,
    ValidationProblemModel,
    install_problem_handlers,
    problem_response,
    problem_responses,
    problem_type,
)

__all__ = [
    "ABOUT_BLANK",
    "PROBLEM_MEDIA_TYPE",
    "PROBLEM_TYPE_BASE",
    "VALIDATION_ERROR_TYPE",
    "ProblemError",
    "ProblemModel",
    "ValidationProblemModel",
    "install_problem_handlers",
    "problem_response",
    "problem_responses",
    "problem_type",
]
