"""The course's files: the competition folder checked, images decoded and cached, writes made atomic."""
