"""The conversation scorecard (``edgevoice eval``): scripted conversations on the virtual clock,
scored per behaviour (response onset, false cut-offs at pauses, barge-in, backchannels,
self-interruptions, early tool calls, answer correctness), with a timeline plot per conversation.

Modules: ``script`` (parsing), ``synth`` (speech and ground truth), ``run`` (the agent on a
``FileIO``), ``score`` (the numbers), ``plot`` (the PNG), ``scorecard`` (all of it: ``evaluate``).
"""
