"""The kv-cache: a thread-safe prefix cache for the engine, and the actor that runs it.

The generation engine calls :class:`~actors.kvcache.store.PrefixCache`
(``lookup`` / ``insert``) directly from its thread; everything else goes
through :class:`~actors.kvcache.actor.KVCacheActor` and the messages of
:mod:`actors.kvcache.protocol`. This package exports nothing itself: the
engine process imports the store and its persistence, and must not pull in
the actor (and with it anyio).
"""
