"""Flask extensions, created unbound here and bound to the app in the factory."""

from flask_limiter import Limiter
from flask_migrate import Migrate
from flask_wtf.csrf import CSRFProtect

from visitor import visitor_rate_key

migrate = Migrate()
csrf = CSRFProtect()
limiter = Limiter(key_func=visitor_rate_key)
