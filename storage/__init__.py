"""The lowest layer: the on-disk format of feature files (see ``storage.features``)."""

from storage.features import (
    FORMAT, LAYOUT_VERSION, QUERY_GROUPS, RAGGED, ROOT, ROW, SUBTITLE_GROUPS, VIDEO_GROUPS, FeatureFile,
    FeatureFileBusy, FeatureFileError, FeatureWriter, RaggedGroup,
)

__all__ = ["FORMAT", "LAYOUT_VERSION", "QUERY_GROUPS", "RAGGED", "ROOT", "ROW", "SUBTITLE_GROUPS", "VIDEO_GROUPS",
           "FeatureFile", "FeatureFileBusy", "FeatureFileError", "FeatureWriter", "RaggedGroup"]
