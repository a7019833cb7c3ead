"""The Hub side: the publish plan, a branch's files, hashing, client settings, Hub failures, pacing, publishing, and
the local Hub server (`localhub/`)."""
