"""What happened: typed, versioned, JSON round-trippable events.

- `ObjectCreated` is parsed once, at the boundary, from the S3 notification wire format (`s3.py`).
- The pipeline writes one manifest per stage; its creation is the next stage's `ObjectCreated`.
- `ModelEvent` is what downstream systems receive on the SNS topic (`model.py`).
"""

from sluice.events.model import MODEL_EVENT_TYPES, ModelEvent
from sluice.events.s3 import ObjectCreated, parse_s3_notification

__all__ = ["MODEL_EVENT_TYPES", "ModelEvent", "ObjectCreated", "parse_s3_notification"]
