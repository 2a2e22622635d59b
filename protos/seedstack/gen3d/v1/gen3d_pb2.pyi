import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_KIND_UNSPECIFIED: _ClassVar[JobKind]
    JOB_KIND_OBJECT: _ClassVar[JobKind]
    JOB_KIND_SCENE: _ClassVar[JobKind]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]

class Stage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STAGE_UNSPECIFIED: _ClassVar[Stage]
    STAGE_MASK: _ClassVar[Stage]
    STAGE_GEOMETRY: _ClassVar[Stage]
    STAGE_TEXTURE: _ClassVar[Stage]
    STAGE_PHYSICS: _ClassVar[Stage]
    STAGE_LAYOUT: _ClassVar[Stage]
    STAGE_EXPORT: _ClassVar[Stage]
    STAGE_CHECK: _ClassVar[Stage]
JOB_KIND_UNSPECIFIED: JobKind
JOB_KIND_OBJECT: JobKind
JOB_KIND_SCENE: JobKind
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
STAGE_UNSPECIFIED: Stage
STAGE_MASK: Stage
STAGE_GEOMETRY: Stage
STAGE_TEXTURE: Stage
STAGE_PHYSICS: Stage
STAGE_LAYOUT: Stage
STAGE_EXPORT: Stage
STAGE_CHECK: Stage

class UploadImageRequest(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class UploadImageResponse(_message.Message):
    __slots__ = ("store_path", "sha256", "size_bytes")
    STORE_PATH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    store_path: str
    sha256: str
    size_bytes: int
    def __init__(self, store_path: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class ImageInput(_message.Message):
    __slots__ = ("data", "store_path")
    DATA_FIELD_NUMBER: _ClassVar[int]
    STORE_PATH_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    store_path: str
    def __init__(self, data: _Optional[bytes] = ..., store_path: _Optional[str] = ...) -> None: ...

class AssetOptions(_message.Message):
    __slots__ = ("size_hint_m", "object_class", "density_kg_per_m3", "wall_thickness_m", "backend", "collision_budget_s", "texture_size_px", "solid")
    SIZE_HINT_M_FIELD_NUMBER: _ClassVar[int]
    OBJECT_CLASS_FIELD_NUMBER: _ClassVar[int]
    DENSITY_KG_PER_M3_FIELD_NUMBER: _ClassVar[int]
    WALL_THICKNESS_M_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    COLLISION_BUDGET_S_FIELD_NUMBER: _ClassVar[int]
    TEXTURE_SIZE_PX_FIELD_NUMBER: _ClassVar[int]
    SOLID_FIELD_NUMBER: _ClassVar[int]
    size_hint_m: float
    object_class: str
    density_kg_per_m3: float
    wall_thickness_m: float
    backend: str
    collision_budget_s: float
    texture_size_px: int
    solid: bool
    def __init__(self, size_hint_m: _Optional[float] = ..., object_class: _Optional[str] = ..., density_kg_per_m3: _Optional[float] = ..., wall_thickness_m: _Optional[float] = ..., backend: _Optional[str] = ..., collision_budget_s: _Optional[float] = ..., texture_size_px: _Optional[int] = ..., solid: _Optional[bool] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("request_id", "image", "options")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    image: ImageInput
    options: AssetOptions
    def __init__(self, request_id: _Optional[str] = ..., image: _Optional[_Union[ImageInput, _Mapping]] = ..., options: _Optional[_Union[AssetOptions, _Mapping]] = ...) -> None: ...

class SubmitJobResponse(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class SceneObject(_message.Message):
    __slots__ = ("name", "image", "options", "support", "x_m", "y_m", "yaw_deg")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    SUPPORT_FIELD_NUMBER: _ClassVar[int]
    X_M_FIELD_NUMBER: _ClassVar[int]
    Y_M_FIELD_NUMBER: _ClassVar[int]
    YAW_DEG_FIELD_NUMBER: _ClassVar[int]
    name: str
    image: ImageInput
    options: AssetOptions
    support: str
    x_m: float
    y_m: float
    yaw_deg: float
    def __init__(self, name: _Optional[str] = ..., image: _Optional[_Union[ImageInput, _Mapping]] = ..., options: _Optional[_Union[AssetOptions, _Mapping]] = ..., support: _Optional[str] = ..., x_m: _Optional[float] = ..., y_m: _Optional[float] = ..., yaw_deg: _Optional[float] = ...) -> None: ...

class SubmitSceneRequest(_message.Message):
    __slots__ = ("request_id", "objects")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    objects: _containers.RepeatedCompositeFieldContainer[SceneObject]
    def __init__(self, request_id: _Optional[str] = ..., objects: _Optional[_Iterable[_Union[SceneObject, _Mapping]]] = ...) -> None: ...

class SubmitSceneResponse(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class StageTiming(_message.Message):
    __slots__ = ("stage", "duration_s")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    stage: Stage
    duration_s: float
    def __init__(self, stage: _Optional[_Union[Stage, str]] = ..., duration_s: _Optional[float] = ...) -> None: ...

class Vector3(_message.Message):
    __slots__ = ("x", "y", "z")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    Z_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    z: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ..., z: _Optional[float] = ...) -> None: ...

class Inertia(_message.Message):
    __slots__ = ("ixx", "iyy", "izz", "ixy", "ixz", "iyz")
    IXX_FIELD_NUMBER: _ClassVar[int]
    IYY_FIELD_NUMBER: _ClassVar[int]
    IZZ_FIELD_NUMBER: _ClassVar[int]
    IXY_FIELD_NUMBER: _ClassVar[int]
    IXZ_FIELD_NUMBER: _ClassVar[int]
    IYZ_FIELD_NUMBER: _ClassVar[int]
    ixx: float
    iyy: float
    izz: float
    ixy: float
    ixz: float
    iyz: float
    def __init__(self, ixx: _Optional[float] = ..., iyy: _Optional[float] = ..., izz: _Optional[float] = ..., ixy: _Optional[float] = ..., ixz: _Optional[float] = ..., iyz: _Optional[float] = ...) -> None: ...

class DropTest(_message.Message):
    __slots__ = ("num_drops", "num_stable", "max_penetration_m", "max_impact_penetration_m", "failures")
    NUM_DROPS_FIELD_NUMBER: _ClassVar[int]
    NUM_STABLE_FIELD_NUMBER: _ClassVar[int]
    MAX_PENETRATION_M_FIELD_NUMBER: _ClassVar[int]
    MAX_IMPACT_PENETRATION_M_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    num_drops: int
    num_stable: int
    max_penetration_m: float
    max_impact_penetration_m: float
    failures: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, num_drops: _Optional[int] = ..., num_stable: _Optional[int] = ..., max_penetration_m: _Optional[float] = ..., max_impact_penetration_m: _Optional[float] = ..., failures: _Optional[_Iterable[str]] = ...) -> None: ...

class AssetReport(_message.Message):
    __slots__ = ("name", "watertight", "num_vertices", "num_faces", "extents_m", "mass_kg", "center_of_mass_m", "inertia_kg_m2", "num_collision_hulls", "silhouette_iou", "drop_test", "texture_error", "geometry_method", "collision_method", "roughness", "metallic", "rest_pose", "texture_baseline_error")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WATERTIGHT_FIELD_NUMBER: _ClassVar[int]
    NUM_VERTICES_FIELD_NUMBER: _ClassVar[int]
    NUM_FACES_FIELD_NUMBER: _ClassVar[int]
    EXTENTS_M_FIELD_NUMBER: _ClassVar[int]
    MASS_KG_FIELD_NUMBER: _ClassVar[int]
    CENTER_OF_MASS_M_FIELD_NUMBER: _ClassVar[int]
    INERTIA_KG_M2_FIELD_NUMBER: _ClassVar[int]
    NUM_COLLISION_HULLS_FIELD_NUMBER: _ClassVar[int]
    SILHOUETTE_IOU_FIELD_NUMBER: _ClassVar[int]
    DROP_TEST_FIELD_NUMBER: _ClassVar[int]
    TEXTURE_ERROR_FIELD_NUMBER: _ClassVar[int]
    GEOMETRY_METHOD_FIELD_NUMBER: _ClassVar[int]
    COLLISION_METHOD_FIELD_NUMBER: _ClassVar[int]
    ROUGHNESS_FIELD_NUMBER: _ClassVar[int]
    METALLIC_FIELD_NUMBER: _ClassVar[int]
    REST_POSE_FIELD_NUMBER: _ClassVar[int]
    TEXTURE_BASELINE_ERROR_FIELD_NUMBER: _ClassVar[int]
    name: str
    watertight: bool
    num_vertices: int
    num_faces: int
    extents_m: Vector3
    mass_kg: float
    center_of_mass_m: Vector3
    inertia_kg_m2: Inertia
    num_collision_hulls: int
    silhouette_iou: float
    drop_test: DropTest
    texture_error: float
    geometry_method: str
    collision_method: str
    roughness: float
    metallic: float
    rest_pose: RestPose
    texture_baseline_error: float
    def __init__(self, name: _Optional[str] = ..., watertight: _Optional[bool] = ..., num_vertices: _Optional[int] = ..., num_faces: _Optional[int] = ..., extents_m: _Optional[_Union[Vector3, _Mapping]] = ..., mass_kg: _Optional[float] = ..., center_of_mass_m: _Optional[_Union[Vector3, _Mapping]] = ..., inertia_kg_m2: _Optional[_Union[Inertia, _Mapping]] = ..., num_collision_hulls: _Optional[int] = ..., silhouette_iou: _Optional[float] = ..., drop_test: _Optional[_Union[DropTest, _Mapping]] = ..., texture_error: _Optional[float] = ..., geometry_method: _Optional[str] = ..., collision_method: _Optional[str] = ..., roughness: _Optional[float] = ..., metallic: _Optional[float] = ..., rest_pose: _Optional[_Union[RestPose, _Mapping]] = ..., texture_baseline_error: _Optional[float] = ...) -> None: ...

class RestPose(_message.Message):
    __slots__ = ("tipping_angle_deg", "upright_tipping_angle_deg", "cut_m", "reoriented", "qw", "qx", "qy", "qz")
    TIPPING_ANGLE_DEG_FIELD_NUMBER: _ClassVar[int]
    UPRIGHT_TIPPING_ANGLE_DEG_FIELD_NUMBER: _ClassVar[int]
    CUT_M_FIELD_NUMBER: _ClassVar[int]
    REORIENTED_FIELD_NUMBER: _ClassVar[int]
    QW_FIELD_NUMBER: _ClassVar[int]
    QX_FIELD_NUMBER: _ClassVar[int]
    QY_FIELD_NUMBER: _ClassVar[int]
    QZ_FIELD_NUMBER: _ClassVar[int]
    tipping_angle_deg: float
    upright_tipping_angle_deg: float
    cut_m: float
    reoriented: bool
    qw: float
    qx: float
    qy: float
    qz: float
    def __init__(self, tipping_angle_deg: _Optional[float] = ..., upright_tipping_angle_deg: _Optional[float] = ..., cut_m: _Optional[float] = ..., reoriented: _Optional[bool] = ..., qw: _Optional[float] = ..., qx: _Optional[float] = ..., qy: _Optional[float] = ..., qz: _Optional[float] = ...) -> None: ...

class AssetFile(_message.Message):
    __slots__ = ("name", "size_bytes", "sha256", "store_path")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    STORE_PATH_FIELD_NUMBER: _ClassVar[int]
    name: str
    size_bytes: int
    sha256: str
    store_path: str
    def __init__(self, name: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., store_path: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "kind", "state", "stage", "progress", "created_at", "updated_at", "stage_timings", "notes", "failure_reason", "assets", "scene_drop_test", "files")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    STAGE_TIMINGS_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    ASSETS_FIELD_NUMBER: _ClassVar[int]
    SCENE_DROP_TEST_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    kind: JobKind
    state: JobState
    stage: Stage
    progress: float
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    stage_timings: _containers.RepeatedCompositeFieldContainer[StageTiming]
    notes: _containers.RepeatedScalarFieldContainer[str]
    failure_reason: str
    assets: _containers.RepeatedCompositeFieldContainer[AssetReport]
    scene_drop_test: DropTest
    files: _containers.RepeatedCompositeFieldContainer[AssetFile]
    def __init__(self, job_id: _Optional[str] = ..., kind: _Optional[_Union[JobKind, str]] = ..., state: _Optional[_Union[JobState, str]] = ..., stage: _Optional[_Union[Stage, str]] = ..., progress: _Optional[float] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., stage_timings: _Optional[_Iterable[_Union[StageTiming, _Mapping]]] = ..., notes: _Optional[_Iterable[str]] = ..., failure_reason: _Optional[str] = ..., assets: _Optional[_Iterable[_Union[AssetReport, _Mapping]]] = ..., scene_drop_test: _Optional[_Union[DropTest, _Mapping]] = ..., files: _Optional[_Iterable[_Union[AssetFile, _Mapping]]] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class WatchJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class FetchAssetRequest(_message.Message):
    __slots__ = ("job_id", "file_names", "chunk_size_bytes")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FILE_NAMES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    file_names: _containers.RepeatedScalarFieldContainer[str]
    chunk_size_bytes: int
    def __init__(self, job_id: _Optional[str] = ..., file_names: _Optional[_Iterable[str]] = ..., chunk_size_bytes: _Optional[int] = ...) -> None: ...

class FetchAssetResponse(_message.Message):
    __slots__ = ("file_name", "offset_bytes", "data", "file_size_bytes", "sha256")
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    OFFSET_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    FILE_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    file_name: str
    offset_bytes: int
    data: bytes
    file_size_bytes: int
    sha256: str
    def __init__(self, file_name: _Optional[str] = ..., offset_bytes: _Optional[int] = ..., data: _Optional[bytes] = ..., file_size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...
