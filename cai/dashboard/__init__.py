"""The web dashboard (`cai dashboard`): the live loop in a browser, served from this machine."""
