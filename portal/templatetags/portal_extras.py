from django import template

register = template.Library()


@register.filter
def get_item(mapping, key):
    """`{{ dict|get_item:key }}`: look up a key that is held in a variable."""
    if isinstance(mapping, dict):
        return mapping.get(key)
    return None
