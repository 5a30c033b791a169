defmodule MaculaDhtExample do
  @moduledoc """
  This VM as a node of a macula_dht network, from Elixir: `:macula_routing_server` in network
  mode, services advertised and discovered through `:macula_service_registry`. The calls are
  the Erlang API's, as an Erlang caller makes them.
  """

  @dht :macula_routing_server
  # Replication width passed to the registry's helpers (the server replicates to its own k).
  @k 20

  @doc """
  Starts this VM's DHT node on 127.0.0.1 (a port of the system's choice), joining through
  `bootstrap` ("host:port" strings); linked to the caller, so it fits a supervisor as `start`.
  """
  def join(bootstrap) do
    :macula_routing_server.start_link(:auto, %{listen: "127.0.0.1:0", bootstrap: bootstrap})
  end

  @doc "Whether this node knows a peer yet (it joins in the background)."
  def joined?, do: :macula_routing_server.stats(@dht).joined

  @doc "This node's id (32 bytes)."
  def node_id, do: :macula_routing_server.node_id(@dht)

  @doc "Publishes this node as a provider of `service` at `endpoint` for `ttl` seconds."
  def advertise(service, endpoint, ttl) do
    provider = %{node_id: node_id(), endpoint: endpoint, metadata: %{}}
    :macula_service_registry.publish_to_dht(@dht, service, provider, ttl, @k)
  end

  @doc "The providers of `service` on the network: `{:ok, providers}`, `{:ok, []}` if none."
  def discover(service, want \\ 1) do
    :macula_service_registry.query_dht_for_service(@dht, service, want)
  end

  @doc "Withdraws this node's provider of `service` from the whole network."
  def remove(service), do: :macula_service_registry.remove_from_dht(@dht, service, node_id())
end
