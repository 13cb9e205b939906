"""One router per resource; composed in `search_api.app`."""
