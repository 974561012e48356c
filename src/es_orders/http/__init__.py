"""What both HTTP services share: RFC 9457 problem details (``problems``), the order state and
exact numbers in their OpenAPI documents (``openapi``), request bodies (``bodies``), health."""

from es_orders.http.problems import (
    ABOUT_BLANK,
    CATALOGUE,
    PROBLEM_MEDIA_TYPE,
    PROBLEM_TYPE_BASE,
    InvalidInput,
    ProblemError,
    ProblemKind,
    ProblemModel,
    ValidationProblemModel,
    install_problem_handlers,
    problem_response,
    problem_responses,
    problem_type,
    validation_problem,
)

__all__ = [
    "ABOUT_BLANK",
    "CATALOGUE",
    "PROBLEM_MEDIA_TYPE",
    "PROBLEM_TYPE_BASE",
    "InvalidInput",
    "ProblemError",
    "ProblemKind",
    "ProblemModel",
    "ValidationProblemModel",
    "install_problem_handlers",
    "problem_response",
    "problem_responses",
    "problem_type",
    "validation_problem",
]
