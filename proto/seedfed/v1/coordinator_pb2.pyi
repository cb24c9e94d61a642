from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Genesis(_message.Message):
    __slots__ = ("canonical", "hash")
    CANONICAL_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    canonical: bytes
    hash: bytes
    def __init__(self, canonical: _Optional[bytes] = ..., hash: _Optional[bytes] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("task_id", "name", "base_digest")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    BASE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    name: str
    base_digest: str
    def __init__(self, task_id: _Optional[str] = ..., name: _Optional[str] = ..., base_digest: _Optional[str] = ...) -> None: ...

class JoinResponse(_message.Message):
    __slots__ = ("client_id", "genesis", "head_round", "head_hash", "lease_seconds", "first_work_round")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    GENESIS_FIELD_NUMBER: _ClassVar[int]
    HEAD_ROUND_FIELD_NUMBER: _ClassVar[int]
    HEAD_HASH_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FIRST_WORK_ROUND_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    genesis: Genesis
    head_round: int
    head_hash: bytes
    lease_seconds: int
    first_work_round: int
    def __init__(self, client_id: _Optional[str] = ..., genesis: _Optional[_Union[Genesis, _Mapping]] = ..., head_round: _Optional[int] = ..., head_hash: _Optional[bytes] = ..., lease_seconds: _Optional[int] = ..., first_work_round: _Optional[int] = ...) -> None: ...

class LeaveRequest(_message.Message):
    __slots__ = ("task_id", "client_id")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    client_id: str
    def __init__(self, task_id: _Optional[str] = ..., client_id: _Optional[str] = ...) -> None: ...

class LeaveResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("task_id", "client_id", "digest_round", "digest")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    DIGEST_ROUND_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    client_id: str
    digest_round: int
    digest: str
    def __init__(self, task_id: _Optional[str] = ..., client_id: _Optional[str] = ..., digest_round: _Optional[int] = ..., digest: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("head_round", "digest_ok", "expected_digest")
    HEAD_ROUND_FIELD_NUMBER: _ClassVar[int]
    DIGEST_OK_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_DIGEST_FIELD_NUMBER: _ClassVar[int]
    head_round: int
    digest_ok: bool
    expected_digest: str
    def __init__(self, head_round: _Optional[int] = ..., digest_ok: _Optional[bool] = ..., expected_digest: _Optional[str] = ...) -> None: ...

class SyncRequest(_message.Message):
    __slots__ = ("task_id", "client_id", "from_round")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_ROUND_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    client_id: str
    from_round: int
    def __init__(self, task_id: _Optional[str] = ..., client_id: _Optional[str] = ..., from_round: _Optional[int] = ...) -> None: ...

class RoundCommit(_message.Message):
    __slots__ = ("round", "seeds", "steps", "hash")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SEEDS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    round: int
    seeds: _containers.RepeatedScalarFieldContainer[int]
    steps: _containers.RepeatedScalarFieldContainer[int]
    hash: bytes
    def __init__(self, round: _Optional[int] = ..., seeds: _Optional[_Iterable[int]] = ..., steps: _Optional[_Iterable[int]] = ..., hash: _Optional[bytes] = ...) -> None: ...

class RoundOpen(_message.Message):
    __slots__ = ("round", "slot", "seeds", "deadline_unix", "lr", "scalar_scale")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    SEEDS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    SCALAR_SCALE_FIELD_NUMBER: _ClassVar[int]
    round: int
    slot: int
    seeds: _containers.RepeatedScalarFieldContainer[int]
    deadline_unix: float
    lr: float
    scalar_scale: float
    def __init__(self, round: _Optional[int] = ..., slot: _Optional[int] = ..., seeds: _Optional[_Iterable[int]] = ..., deadline_unix: _Optional[float] = ..., lr: _Optional[float] = ..., scalar_scale: _Optional[float] = ...) -> None: ...

class CaughtUp(_message.Message):
    __slots__ = ("head_round", "head_hash")
    HEAD_ROUND_FIELD_NUMBER: _ClassVar[int]
    HEAD_HASH_FIELD_NUMBER: _ClassVar[int]
    head_round: int
    head_hash: bytes
    def __init__(self, head_round: _Optional[int] = ..., head_hash: _Optional[bytes] = ...) -> None: ...

class SyncEvent(_message.Message):
    __slots__ = ("commit", "open", "caught_up")
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    CAUGHT_UP_FIELD_NUMBER: _ClassVar[int]
    commit: RoundCommit
    open: RoundOpen
    caught_up: CaughtUp
    def __init__(self, commit: _Optional[_Union[RoundCommit, _Mapping]] = ..., open: _Optional[_Union[RoundOpen, _Mapping]] = ..., caught_up: _Optional[_Union[CaughtUp, _Mapping]] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("task_id", "client_id", "round", "slot", "scalars", "loss", "examples")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    SCALARS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    client_id: str
    round: int
    slot: int
    scalars: bytes
    loss: float
    examples: int
    def __init__(self, task_id: _Optional[str] = ..., client_id: _Optional[str] = ..., round: _Optional[int] = ..., slot: _Optional[int] = ..., scalars: _Optional[bytes] = ..., loss: _Optional[float] = ..., examples: _Optional[int] = ...) -> None: ...

class SubmitResponse(_message.Message):
    __slots__ = ("received", "expected")
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    received: int
    expected: int
    def __init__(self, received: _Optional[int] = ..., expected: _Optional[int] = ...) -> None: ...

class GetLedgerRequest(_message.Message):
    __slots__ = ("task_id", "from_round", "to_round")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_ROUND_FIELD_NUMBER: _ClassVar[int]
    TO_ROUND_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    from_round: int
    to_round: int
    def __init__(self, task_id: _Optional[str] = ..., from_round: _Optional[int] = ..., to_round: _Optional[int] = ...) -> None: ...

class GetLedgerResponse(_message.Message):
    __slots__ = ("genesis", "rounds")
    GENESIS_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    genesis: Genesis
    rounds: _containers.RepeatedCompositeFieldContainer[RoundCommit]
    def __init__(self, genesis: _Optional[_Union[Genesis, _Mapping]] = ..., rounds: _Optional[_Iterable[_Union[RoundCommit, _Mapping]]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("task_id", "head_round", "head_hash", "open_round", "clients_online", "submissions_in_open_round", "digest_round", "digest", "ledger_bytes", "last_loss")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    HEAD_ROUND_FIELD_NUMBER: _ClassVar[int]
    HEAD_HASH_FIELD_NUMBER: _ClassVar[int]
    OPEN_ROUND_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_ONLINE_FIELD_NUMBER: _ClassVar[int]
    SUBMISSIONS_IN_OPEN_ROUND_FIELD_NUMBER: _ClassVar[int]
    DIGEST_ROUND_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    LEDGER_BYTES_FIELD_NUMBER: _ClassVar[int]
    LAST_LOSS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    head_round: int
    head_hash: bytes
    open_round: int
    clients_online: int
    submissions_in_open_round: int
    digest_round: int
    digest: str
    ledger_bytes: int
    last_loss: float
    def __init__(self, task_id: _Optional[str] = ..., head_round: _Optional[int] = ..., head_hash: _Optional[bytes] = ..., open_round: _Optional[int] = ..., clients_online: _Optional[int] = ..., submissions_in_open_round: _Optional[int] = ..., digest_round: _Optional[int] = ..., digest: _Optional[str] = ..., ledger_bytes: _Optional[int] = ..., last_loss: _Optional[float] = ...) -> None: ...
