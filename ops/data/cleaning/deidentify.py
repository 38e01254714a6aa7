"""Keep what identifies a person inside the DICOM header it came in.

MedImgs reads a DICOM header only for what rendering needs (sizes, photometric
interpretation, rescale, window, LUTs) and for ``BurnedInAnnotation``; no header value is
copied into the manifest, the rejects table, the logs or MLflow. The one way a value could
still slip out is an error message: a decoder or parser that quotes an element in its
exception text, which becomes a rejection's ``detail``. ``scrub`` removes every identifying
value of the dataset from such text before it is recorded.

The attributes are those of the DICOM basic application confidentiality profile (PS3.15
Annex E) that name, number, date or locate a person or an institution, plus every element of
value representation PN (person name) wherever it sits.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

IDENTIFYING_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "MedicalRecordLocator",
    "MilitaryRank",
    "BranchOfService",
    "EthnicGroup",
    "PatientReligiousPreference",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "ReferringPhysicianName",
    "ReferringPhysicianAddress",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "OperatorsName",
    "RequestingPhysician",
    "AccessionNumber",
    "StudyID",
    "DeviceSerialNumber",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "InstanceCreationDate",
    "AcquisitionDateTime",
    "StudyTime",
    "SeriesTime",
    "AcquisitionTime",
    "ContentTime",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
)
MIN_LENGTH = 3  # shorter values ("M", "1") are too common in ordinary text to mean anyone
REDACTED = "<redacted>"


def identifying_values(ds) -> set[str]:
    """Every identifying value of ``ds``, as text, including the parts of person names."""
    values: set[str] = set()
    for keyword in IDENTIFYING_KEYWORDS:
        element = ds.get(keyword) if hasattr(ds, "get") else None
        if element is not None:
            values.update(_texts(element))
    try:
        for element in ds.iterall():
            if element.VR == "PN":
                values.update(_texts(element.value))
    except Exception:  # a header that cannot be walked: the keyword list still holds
        pass
    return {v for v in values if len(v) >= MIN_LENGTH}


def _texts(value) -> Iterable[str]:
    items = value if isinstance(value, list | tuple) or _is_multivalue(value) else [value]
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        yield text
        yield from (part for part in re.split(r"[\^=]+", text) if part.strip())


def _is_multivalue(value) -> bool:
    from pydicom.multival import MultiValue

    return isinstance(value, MultiValue)


def scrub(text: str, values: Iterable[str]) -> str:
    """``text`` with every occurrence of ``values`` (case-insensitive) replaced."""
    for value in sorted(values, key=len, reverse=True):  # whole names before their parts
        text = re.sub(re.escape(value), REDACTED, text, flags=re.IGNORECASE)
    return text
