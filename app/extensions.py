"""Unbound extension singletons and process-wide metrics; bound to an app in create_app."""

from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf import CSRFProtect
from prometheus_client import Counter
from prometheus_client import Histogram

from app.models.base import Base

db = SQLAlchemy(model_class=Base)
# render_as_batch: SQLite cannot ALTER most things; batch mode rebuilds the table instead.
migrate = Migrate(render_as_batch=True, compare_type=True)
login_manager = LoginManager()
csrf = CSRFProtect()
limiter = Limiter(key_func=get_remote_address)

# Prometheus metrics live in the default registry: one set per process (gunicorn workers are
# aggregated with PROMETHEUS_MULTIPROC_DIR, see README "Metrics").
http_requests = Counter(
    "keyward_http_requests_total",
    "HTTP requests answered, by endpoint, method and status code.",
    ["endpoint", "method", "status"],
)
http_request_duration = Histogram(
    "keyward_http_request_duration_seconds",
    "Time to answer an HTTP request, by endpoint and method.",
    ["endpoint", "method"],
)
signins = Counter(
    "keyward_signins_total",
    "Sign-in attempts, by method and outcome.",
    ["method", "outcome"],
)
