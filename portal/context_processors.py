from portal.roles import CAPABILITIES, user_can


def roles(request):
    """`can.upload`, `can.deploy`... in every template, to show only allowed actions."""
    user = getattr(request, "user", None)
    return {"can": {cap: user_can(user, cap) for cap in CAPABILITIES}}
