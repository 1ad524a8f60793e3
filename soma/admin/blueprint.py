"""The admin area's blueprint, which every admin page module registers its routes on."""

from flask import Blueprint

bp = Blueprint("admin", __name__, url_prefix="/admin")
