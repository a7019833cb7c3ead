"""The Hub side: the publish plan, pacing, publishing, and the local Hub server (`localhub/`)."""
