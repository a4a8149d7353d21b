"""The wire adapter: the one place that knows the protobuf messages.

Converts between vnet's dataclasses and vnetrpc.v1 messages (messages),
encodes and decodes tunnel frames (frames), and translates errors between
vnet and gRPC status codes (status). Everything else in vnet sees
dataclasses, bytes and VnetError; `from vnet import wire` gives all three.
"""

from __future__ import annotations

from vnet.wire.frames import (
    ACCEPTED as ACCEPTED,
)
from vnet.wire.frames import (
    DATA_TAG as DATA_TAG,
)
from vnet.wire.frames import (
    FIN_FRAME as FIN_FRAME,
)
from vnet.wire.frames import (
    FrameKind as FrameKind,
)
from vnet.wire.frames import (
    decode_datagram as decode_datagram,
)
from vnet.wire.frames import (
    decode_frame as decode_frame,
)
from vnet.wire.frames import (
    decode_opened as decode_opened,
)
from vnet.wire.frames import (
    encode_data as encode_data,
)
from vnet.wire.frames import (
    encode_opened as encode_opened,
)
from vnet.wire.frames import (
    encode_reset as encode_reset,
)
from vnet.wire.frames import (
    is_accepted as is_accepted,
)
from vnet.wire.frames import (
    terminal_kind as terminal_kind,
)
from vnet.wire.messages import (
    ACCEPT_METHOD as ACCEPT_METHOD,
)
from vnet.wire.messages import (
    DIAL_METHOD as DIAL_METHOD,
)
from vnet.wire.messages import (
    MD_AUTH as MD_AUTH,
)
from vnet.wire.messages import (
    MD_SERVEID as MD_SERVEID,
)
from vnet.wire.messages import (
    MD_SESSION as MD_SESSION,
)
from vnet.wire.messages import (
    MD_SPARE as MD_SPARE,
)
from vnet.wire.messages import (
    MD_TUNNEL as MD_TUNNEL,
)
from vnet.wire.messages import (
    SERVICE as SERVICE,
)
from vnet.wire.messages import (
    serve_from_pb as serve_from_pb,
)
from vnet.wire.messages import (
    serve_to_pb as serve_to_pb,
)
from vnet.wire.messages import (
    serves_from_pb as serves_from_pb,
)
from vnet.wire.messages import (
    vnet_to_pb as vnet_to_pb,
)
from vnet.wire.node_messages import ControlEvent as ControlEvent
from vnet.wire.node_messages import EchoAsked as EchoAsked
from vnet.wire.node_messages import GoingAway as GoingAway
from vnet.wire.node_messages import IdConflict as IdConflict
from vnet.wire.node_messages import Joined as Joined
from vnet.wire.node_messages import OpenTunnel as OpenTunnel
from vnet.wire.node_messages import Registered as Registered
from vnet.wire.node_messages import ServeAdded as ServeAdded
from vnet.wire.node_messages import ServeChanges as ServeChanges
from vnet.wire.node_messages import ServeRemoved as ServeRemoved
from vnet.wire.node_messages import Snapshot as Snapshot
from vnet.wire.node_messages import UnserveAsked as UnserveAsked
from vnet.wire.node_messages import VnetInfo as VnetInfo
from vnet.wire.node_messages import answer_unserve_request as answer_unserve_request
from vnet.wire.node_messages import control_request as control_request
from vnet.wire.node_messages import echo_request as echo_request
from vnet.wire.node_messages import event_from_pb as event_from_pb
from vnet.wire.node_messages import join_request as join_request
from vnet.wire.node_messages import joined_from_pb as joined_from_pb
from vnet.wire.node_messages import leave_request as leave_request
from vnet.wire.node_messages import list_serves_request as list_serves_request
from vnet.wire.node_messages import list_vnets_request as list_vnets_request
from vnet.wire.node_messages import listed_serves_from_pb as listed_serves_from_pb
from vnet.wire.node_messages import ping_request as ping_request
from vnet.wire.node_messages import pinged_from_pb as pinged_from_pb
from vnet.wire.node_messages import register_request as register_request
from vnet.wire.node_messages import registered_from_pb as registered_from_pb
from vnet.wire.node_messages import route_stub as route_stub
from vnet.wire.node_messages import unregister_request as unregister_request
from vnet.wire.node_messages import unserve_request as unserve_request
from vnet.wire.node_messages import unserved_from_pb as unserved_from_pb
from vnet.wire.node_messages import vnets_from_pb as vnets_from_pb
from vnet.wire.status import (
    ERROR_OF as ERROR_OF,
)
from vnet.wire.status import (
    STATUS_OF as STATUS_OF,
)
from vnet.wire.status import (
    error_of as error_of,
)
from vnet.wire.status import (
    status_of as status_of,
)
