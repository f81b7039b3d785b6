"""The turn-taking benchmark's espeak-ng sentences (``benchmarks/turn_taking_bench.py --espeak-set``).

Set "a" is the one the defaults were chosen on (``TurnOptions``' marks and floors; BENCHMARKS.md).
Set "b" was written afterwards, with other sentences and voices, to check a change on speech it was
not tuned on: choose on "a", then run "b" before believing a gain. Each pause item is a sentence
cut where a speaker may stop to think (both halves spoken apart, a 0.7-1.5 s silence between them);
each complete item a whole request, question or statement.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EspeakSet:
    pause: tuple[tuple[str, str], ...]  # (before the pause, after it)
    complete: tuple[str, ...]
    voices: tuple[tuple[str, int], ...]  # (espeak-ng voice, words per minute), taken in turn


SET_A = EspeakSet(
    pause=(
        ("I would like to know", "what the weather is like tomorrow."),
        ("Can you tell me", "how far the moon is?"),
        ("What I really want is", "a table for two at eight."),
        ("Could you remind me to", "call my sister tonight?"),
        ("The thing I keep forgetting is", "where I parked the car."),
        ("I was wondering if", "you could play some jazz."),
        ("Please set an alarm for", "six thirty in the morning."),
        ("How long does it take to", "boil an egg?"),
        ("My favourite part of the trip was", "the boat ride on the lake."),
        ("Can you find me a recipe for", "something with chickpeas?"),
        ("I need to send an email to", "my manager about the meeting."),
        ("What is the best way to", "learn a new language?"),
        ("Tell me about the history of", "the Roman empire."),
        ("I think the answer is", "somewhere around forty two."),
        ("Could you turn the lights", "down in the living room?"),
        ("Remind me what time", "the train leaves on Friday."),
        ("I'd like to order", "a large pizza with mushrooms."),
        ("What should I cook for", "dinner tonight?"),
        ("Do you know if", "the museum is open on Mondays?"),
        ("The reason I'm asking is that", "my flight was cancelled."),
        ("Can you explain how", "a rainbow forms?"),
        ("I want to book a flight to", "Lisbon next weekend."),
        ("So the problem with my laptop is", "it will not turn on."),
        ("Could you add milk and", "eggs to my shopping list?"),
    ),
    complete=(
        "What is the capital of France?",
        "How far away is the moon?",
        "Can you tell me a fun fact about cats?",
        "What time is it in Tokyo right now?",
        "Please turn off the kitchen lights.",
        "How do I make a cup of tea?",
        "I would like to know what the weather is like tomorrow.",
        "Set a timer for ten minutes.",
        "Who wrote the novel Pride and Prejudice?",
        "What is the tallest mountain in the world?",
        "Play some relaxing music.",
        "How many days are there in a leap year?",
        "Thanks, that was really helpful.",
        "Can you recommend a good book to read?",
        "What is the square root of one hundred and forty four?",
        "Remind me to water the plants tomorrow morning.",
        "Why is the sky blue?",
        "How do you say thank you in Japanese?",
        "I need a taxi to the airport.",
        "What's the difference between a frog and a toad?",
        "Tell me a joke.",
        "Is it going to rain this afternoon?",
        "Add bread to my shopping list.",
        "How long does it take to fly to London?",
    ),
    voices=(("en-us", 160), ("en-gb", 175), ("en-us+f3", 145), ("en-us+m7", 190), ("en-gb+f2", 140), ("en-us", 180)),
)

SET_B = EspeakSet(
    pause=(
        ("I was hoping you could", "check the traffic for me."),
        ("What do you think about", "the new phone?"),
        ("Could you send a message to", "my brother?"),
        ("I'm trying to figure out", "how to fix my bike."),
        ("Let me know when", "the package arrives."),
        ("Is there any way to", "make this faster?"),
        ("Can you look up", "the score of the game?"),
        ("I'd love to hear", "a song by the Beatles."),
        ("Where is the nearest", "gas station?"),
        ("Turn the volume", "up a little."),
        ("Please tell me about", "the weather in Berlin."),
        ("Schedule a meeting with", "the design team on Tuesday."),
        ("How much does it cost to", "fly to New York?"),
        ("What happens if", "I miss my connection?"),
        ("Do you remember", "what I told you yesterday?"),
        ("I want to cancel", "my subscription."),
        ("Find me a good restaurant near", "the station."),
        ("The best thing about summer is", "the long evenings."),
        ("Could you explain why", "the ocean is salty?"),
        ("Call my mother and tell her", "I'll be late."),
    ),
    complete=(
        "What's the weather like in Berlin?",
        "Turn the volume up a little.",
        "How much does a flight to New York cost?",
        "Send a message to my brother.",
        "Where is the nearest gas station?",
        "Can you play a song by the Beatles?",
        "I want to cancel my subscription.",
        "What's the score of the game?",
        "Schedule a meeting for Tuesday.",
        "Why is the ocean salty?",
        "Find me a good restaurant.",
        "Call my mother.",
        "How do I fix a flat tyre?",
        "What's on my calendar today?",
        "Tell me something interesting.",
        "Who won the world cup in two thousand eighteen?",
        "Open the garage door.",
        "How many ounces are in a pound?",
        "Lock the front door, please.",
        "What does photosynthesis mean?",
    ),
    voices=(("en-gb", 165), ("en-us+f2", 155), ("en-us", 170), ("en-gb+m3", 150), ("en-us+f4", 185)),
)

ESPEAK_SETS = {"a": SET_A, "b": SET_B}
