"""What a reviewer and a careful user run before trusting a number or paying for GPUs: the audit of one stage
instance (``python -m pipeline.review.audit``) and the rehearsal of a GPU profile on this CPU
(``python -m pipeline.review.rehearse``)."""
