"""The one converter at the edge: database rows and JSON <-> frozen records.

Records in ``fusillade.core.models`` carry no serialisation details. Rows arrive as
dicts (psycopg's ``dict_row``) whose keys match field names; the few fields whose
stored shape differs (frozen counts spread over columns, failures over two columns)
get hooks here, and nowhere else.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

import cattrs

from fusillade.core.models import BatchRecord, RequestCounts, Usage

T = TypeVar("T")

converter = cattrs.Converter()
converter.register_structure_hook(UUID, lambda v, _: v if isinstance(v, UUID) else UUID(str(v)))
converter.register_structure_hook(
    datetime, lambda v, _: v if isinstance(v, datetime) else datetime.fromisoformat(v)
)
converter.register_unstructure_hook(UUID, str)
converter.register_unstructure_hook(datetime, lambda d: d.isoformat())


def _batch_from_row(row: dict[str, Any], _: type[BatchRecord]) -> BatchRecord:
    frozen = None
    if row.get("frozen_completed") is not None:
        completed, failed, canceled = (
            row["frozen_completed"],
            row["frozen_failed"],
            row["frozen_canceled"],
        )
        frozen = RequestCounts(
            total=row["total"], completed=completed, failed=failed, canceled=canceled
        )
    return BatchRecord(
        id=row["id"],
        owner=row["owner"],
        input_file_id=row["input_file_id"],
        output_file_id=row["output_file_id"],
        error_file_id=row["error_file_id"],
        endpoint=row["endpoint"],
        completion_window=row["completion_window"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        total=row["total"],
        models=tuple(row.get("models") or ()),
        version=row.get("version", 0),
        metadata=row.get("metadata"),
        cancelling_at=row.get("cancelling_at"),
        expired_at=row.get("expired_at"),
        frozen_counts=frozen,
        usage=None
        if frozen is None
        else Usage(
            input_tokens=row["frozen_input_tokens"],
            output_tokens=row["frozen_output_tokens"],
            total_tokens=row["frozen_input_tokens"] + row["frozen_output_tokens"],
        ),
        last_finished_at=row.get("last_finished_at"),
        escalated_at=row.get("escalated_at"),
    )


converter.register_structure_hook(BatchRecord, _batch_from_row)


def structure(row: Any, cls: type[T]) -> T:
    """Turn a row (dict) or decoded JSON into ``cls``."""
    return converter.structure(row, cls)


def unstructure(obj: Any) -> Any:
    return converter.unstructure(obj)
