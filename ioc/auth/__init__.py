"""Identity for people and machines: local users (Argon2), browser sessions, API tokens and OpenID Connect
bearer JWTs, resolved to one :class:`~ioc.auth.model.Principal` with a :class:`~ioc.auth.model.Role`.

Routes declare the role they need with ``ioc.api.deps.requires``; this package only says who is calling.
"""
