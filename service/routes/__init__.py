"""The HTTP routes, one APIRouter per area: chips (programming, summaries, evaluation, drift,
the zoo), inference, recalibration jobs, operations (metrics, health) and the Open Inference
Protocol v2. :func:`service.app.create_app` mounts them."""
