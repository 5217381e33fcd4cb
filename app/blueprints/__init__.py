"""HTML and JSON blueprints; each package defines ``bp`` in __init__ and its routes."""
