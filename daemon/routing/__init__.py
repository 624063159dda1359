"""A user's files: moved without ever being overwritten, and every move remembered.

``records`` holds the values that cross from the runtime (a file as read, a decision,
where a file stands); ``router`` carries a batch of decisions out through ``fileops``,
writing the ``journal`` before and after (one commit for the batch's intents, one for
its completions); ``folders`` knows the output root and its class folders
by identity; ``recovery`` repairs what a crash interrupted and undoes decisions; ``lock``
keeps one writer per journal. No torch here.
"""
