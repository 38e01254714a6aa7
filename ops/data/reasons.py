"""Why a raw file was not kept: the vocabulary of ``rejects.parquet``'s ``reason`` column.

One module, so the sources that plant defects, the cleaning that finds them and the tests that
check them all spell a reason the same way.
"""

from __future__ import annotations

EMPTY_FILE = "empty_file"  # zero bytes
NOT_AN_IMAGE = "not_an_image"  # text notes, CSVs that label nothing, system junk
TRUNCATED = "truncated"  # a recognised image whose data ends early
CORRUPT_IMAGE = "corrupt_image"  # a recognised image format that does not decode
UNSUPPORTED_FORMAT = "unsupported_format"  # no decoder: a DICOM transfer syntax, NIfTI pairs
DEGENERATE_SIZE = "degenerate_size"  # under 8 px a side, or too elongated to crop a square
DECOMPRESSION_BOMB = "decompression_bomb"  # more pixels than ingest.max_image_pixels
FILE_TOO_LARGE = "file_too_large"  # more bytes than ingest.max_file_bytes (also zip members)
UNSAFE_PATH = "unsafe_path"  # archive member escaping its folder (zip slip), absolute paths
SYMLINK = "symlink"  # symbolic links, on disk or inside an archive: never followed
CORRUPT_ARCHIVE = "corrupt_archive"  # a zip that cannot be read
EMPTY_ARCHIVE = "empty_archive"  # a readable zip without a single file member
NESTED_ARCHIVE = "nested_archive"  # an archive inside an archive: not expanded
ENCRYPTED_MEMBER = "encrypted_member"
LABEL_FILE = "label_file"  # a CSV that was read for labels (consumed, not an image)
UNLABELLED = "unlabelled"  # an image no class folder or label CSV names
UNREADABLE = "unreadable"  # listed in the raw index but cannot be opened (vanished, permissions)
EXCLUDED = "excluded"  # matches the source's ``exclude`` patterns (e.g. segmentation masks)
EMPTY_VOLUME = "empty_volume"  # every frame or slice of a multi-frame file or volume is one grey
BURNED_IN_ANNOTATION = "burned_in_annotation"  # DICOM BurnedInAnnotation YES: text in the pixels

ALL = (
    EMPTY_FILE,
    NOT_AN_IMAGE,
    TRUNCATED,
    CORRUPT_IMAGE,
    UNSUPPORTED_FORMAT,
    DEGENERATE_SIZE,
    DECOMPRESSION_BOMB,
    FILE_TOO_LARGE,
    UNSAFE_PATH,
    SYMLINK,
    CORRUPT_ARCHIVE,
    EMPTY_ARCHIVE,
    NESTED_ARCHIVE,
    ENCRYPTED_MEMBER,
    LABEL_FILE,
    UNLABELLED,
    UNREADABLE,
    EXCLUDED,
    EMPTY_VOLUME,
    BURNED_IN_ANNOTATION,
)
