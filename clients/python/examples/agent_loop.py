import os

from cordon_client import Cordon

messages = [
    "I am allergic to peanuts",
    "The team standup moved to 9:30",
    "What snack should I bring to the standup?",
]

with Cordon(os.environ["CORDON_URL"], os.environ["CORDON_TOKEN"]) as memory:
    for message in messages:
        print(f"user: {message}")
        for m in memory.recall(message, limit=3, min_score=0.1):
            print(f"  remembered ({m.score:.2f}): {m.text}")
        # ... the agent answers here, with those memories in its prompt ...
        memory.remember(message, {"source": "chat"})
