"""What every non-webhook request passes before a route sees it: body caps, the API token
checked before any body is read, security headers, error answers that never echo input."""
