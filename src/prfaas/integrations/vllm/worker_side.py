"""The connector's worker half: owns the KvSender (prefill) and the KvReceiver (decode).

Prefill: ``save_kv_layer`` runs inside each attention layer, after the layer has written
this step's KV. For every request whose prompt completes in this step it copies the layer's
rows out of vLLM's blocks and queues them on that request's ``LayerStream``: the copy is
the only work on the forward path, and once made, vLLM may free or reuse the blocks.
Decode: ``start_load_kv`` starts one ``Loader`` thread per new load; ``get_finished`` and
``get_block_ids_with_load_errors`` report, in the same step, every load that ended and the
blocks of those that failed.

Both halves bind a transfer to its prompt: the header carries ``prompt_hash`` of the prompt
token ids and the decode side lands it only if that equals its own hash of the prompt it
reserved blocks for (docs/wire-format.md).
"""

from __future__ import annotations

import logging
import re
import time

import torch

from prfaas.integrations.vllm.config import ConnectorConfig
from prfaas.integrations.vllm.events import EventLog
from prfaas.integrations.vllm.layout import TORCH_TO_WIRE, BlockLayout, CacheWriter, wire_names
from prfaas.integrations.vllm.loading import Loader
from prfaas.integrations.vllm.metadata import HandoffMetadata, SendSpec
from prfaas.integrations.vllm.params import LinkChoice, salt_bytes
from prfaas.integrations.vllm.sending import LayerStream, SendOutcomes
from prfaas.kvcache.hashing import prompt_hash, root_hash
from prfaas.transfer.config import ReceiverConfig
from prfaas.transfer.link import Link
from prfaas.transfer.messages import LayerEntry, LayerKind, TransferHeader
from prfaas.transfer.receiver import KvReceiver
from prfaas.transfer.sender import KvSender
from prfaas.transfer.tls import PLAINTEXT

logger = logging.getLogger(__name__)
_LAYER_NUMBER = re.compile(r"\.(\d+)\.")


def layer_order(names: list[str]) -> list[str]:
    """vLLM's attention layer names (``model.layers.7.self_attn.attn``) in model order."""

    def number(name: str) -> int:
        found = _LAYER_NUMBER.findall(name)
        if not found:
            raise ValueError(f"no layer number in {name!r}")
        return int(found[-1])

    return sorted(names, key=number)


class HandoffWorker:
    def __init__(
        self,
        config: ConnectorConfig,
        fingerprint: bytes,
        block_size: int,
        writer: CacheWriter,
        is_producer: bool,
        is_consumer: bool,
    ) -> None:
        self.config, self.fingerprint, self.block_size = config, fingerprint, block_size
        self._writer = writer
        self.is_producer, self.is_consumer = is_producer, is_consumer
        self.events = EventLog(config.events_file)
        self.send_outcomes = SendOutcomes(events=self.events)
        self.receiver: KvReceiver | None = None
        self.loader: Loader | None = None
        self._sender: KvSender | None = None  # the configured link
        self._senders: dict[LinkChoice, KvSender] = {}  # links named by requests
        self._layer_index: dict[str, int] = {}
        self._layout: BlockLayout | None = None
        self._dtype = torch.float32
        self._streams: dict[str, LayerStream] = {}  # request id -> stream still being fed
        self._finished_streams: list[LayerStream] = []
        self._load_errors: set[int] = set()

    def prompt_hash(self, prompt_token_ids: tuple[int, ...], cache_salt: str | None) -> bytes:
        """``kvcache.hashing.prompt_hash`` of a prompt, as both ends of a hand-off compute it.

        Root: the connector's model fingerprint (hex, as prfaas's engine spells it) and the
        request's tenant salt (its vLLM ``cache_salt``, ``params.salt_bytes``): KV computed
        for one tenant never lands in another's request. Block size: this instance's vLLM
        block size; the prefill and decode instances must run the same one, or every
        transfer is refused (the size only decides where the chain is cut: any size binds
        every token)."""
        root = root_hash(self.fingerprint.hex(), salt_bytes(cache_salt))
        return prompt_hash(prompt_token_ids, self.block_size, root)

    def register(self, kv_caches: dict[str, torch.Tensor]) -> None:
        names = layer_order(list(kv_caches))
        self._layer_index = {name: i for i, name in enumerate(names)}
        first = kv_caches[names[0]]
        self._layout = BlockLayout.probe(first, self.block_size, self._writer)
        self._dtype = first.dtype
        if self.is_producer:
            self._sender = KvSender(
                Link(self.config.link_config()),
                tls=self.config.client_tls(),
                server_name=self.config.peer_cluster,
                deadlines=self.config.deadlines(),
                auth_key=self.config.auth_key(),
            )
        if self.is_consumer:
            receiver_config = ReceiverConfig(
                host=self.config.listen_host,
                port=self.config.listen_port,
                fingerprint=self.fingerprint,
                deadlines=self.config.deadlines(),
                auth_key=self.config.auth_key(),
                pool_bytes=0,
            )
            self.receiver = KvReceiver(receiver_config, tls=self.config.server_tls()).start()
            layers = [kv_caches[name] for name in names]
            self.loader = Loader(
                self.receiver,
                layers,
                self._layout,
                self.config.load_timeout_s,
                self.events,
                self.prompt_hash,
            )
            logger.info("prfaas KV receiver listening on %s", self.receiver.address)

    # -- prefill -------------------------------------------------------------------------

    def _sender_for(self, spec: SendSpec) -> KvSender:
        """The configured link's sender, or one per link a request names (its pacing and
        egress are shared by every transfer over that link)."""
        assert self._sender is not None, "not a kv_producer"
        if spec.link is None:
            return self._sender
        sender = self._senders.get(spec.link)
        if sender is None:
            sender = KvSender(
                Link(self.config.link_for(spec.link)),
                tls=self.config.client_tls() if spec.link.tls else PLAINTEXT,
                server_name=spec.link.server_name or None,
                deadlines=self.config.deadlines(),
                auth_key=self.config.auth_key(),
            )
            self._senders[spec.link] = sender
        return sender

    def _header(self, spec: SendSpec) -> TransferHeader:
        assert self._layout is not None
        shape = (spec.num_tokens, *self._layout.row_shape)
        wire = TORCH_TO_WIRE[self._dtype]
        entries = [
            LayerEntry(name, LayerKind.BLOCKS, wire, shape)
            for i in range(len(self._layer_index))
            for name in wire_names(i)
        ]
        return TransferHeader(
            spec.transfer_id,
            self.fingerprint,
            self.config.codec if spec.link is None else spec.link.codec,
            tuple(entries),
            self.prompt_hash(spec.prompt_token_ids, spec.cache_salt),
        )

    def save_layer(self, meta: HandoffMetadata, layer_name: str, kv_layer: torch.Tensor) -> None:
        if not meta.sends:
            return
        assert self._sender is not None and self._layout is not None, "not a kv_producer"
        index = self._layer_index[layer_name]
        for spec in meta.sends:
            stream = self._streams.get(spec.request_id)
            if stream is None:
                stream = LayerStream(
                    self._sender_for(spec),
                    spec.address,
                    self._header(spec),
                    self.config.send_timeout_s,
                    self.send_outcomes,
                )
                self._streams[spec.request_id] = stream
            keys, values = self._layout.gather(kv_layer, list(spec.block_ids), spec.num_tokens)
            stream.put_layer(2 * index, keys)
            stream.put_layer(2 * index + 1, values)
            if index == len(self._layer_index) - 1:  # every layer given: the stream owns it
                self._finished_streams.append(self._streams.pop(spec.request_id))
        self._finished_streams = [s for s in self._finished_streams if not s.done]

    # -- decode --------------------------------------------------------------------------

    def start_loads(self, meta: HandoffMetadata) -> None:
        if not meta.loads:
            return
        assert self.loader is not None, "not a kv_consumer"
        for spec in meta.loads:
            self.loader.start(spec)

    def finished(self, finished_req_ids: set[str]) -> set[str] | None:
        """Loads that ended since the last call; their failed blocks are kept for
        ``take_load_errors`` in the same step."""
        if self.loader is None:
            return None
        self.loader.abandon(finished_req_ids)
        done, failed_blocks = self.loader.outcomes.take()
        self._load_errors = failed_blocks
        return done or None

    def take_load_errors(self) -> set[int]:
        errors, self._load_errors = self._load_errors, set()
        return errors

    def close(self, timeout_s: float = 5.0) -> None:
        end_s = time.monotonic() + timeout_s
        for stream in self._finished_streams:
            stream.join(max(0.0, end_s - time.monotonic()))
        if self.receiver is not None:
            self.receiver.close()
