"""``gensift review``: the review page, its queues and the human actions it takes."""
