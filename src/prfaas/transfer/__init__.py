"""KV over TCP: wire format, codecs, pacing, TLS, sender, receiver. Bytes, not models.

Public API (see docs/transfer.md):
  sender.KvSender(link, tls=, server_name=, deadlines=)  .open(...) -> OutgoingTransfer
      OutgoingTransfer.send_layer(i, array) / .finish() -> TransferStats / .abort()
      KvSender.send(address, header, arrays, retries=) -> TransferStats
  receiver.KvReceiver(ReceiverConfig, tls=, listener=)   .wait(id) -> ReceivedTransfer,
      .release(id), .allocated_bytes
  messages.TransferHeader / LayerEntry / LayerKind / DType   what a payload looks like
  link.Link(LinkConfig)                                  pacer + monitor, .set_rate_gbps, .stats
  config.Deadlines / LinkConfig / ReceiverConfig         frozen configuration
  errors.TransferError and its subclasses                 the only exceptions callers see
  tls.write_certs / TlsConfig / server_context / client_context / PLAINTEXT (explicit)
  emulator.LinkEmulator(EmulatorConfig)                  a WAN link in a TCP relay
  audit.AuditLog(path) / AuditRecord                    one JSON line per cross-cluster transfer

Kept import-free on purpose: `prfaas` commands load without numpy or cryptography.
"""
