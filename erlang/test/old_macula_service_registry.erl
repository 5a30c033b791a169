%% @doc Test/bench reference of the OLD Macula service registry's DHT helpers (not shipped).
%%
%% Only the three helpers the benchmark compares, over `old_macula_routing_server': a provider is
%% stored (with `ttl' and `advertised_at' added) under `sha256(ServiceId)'.
-module(old_macula_service_registry).

-export([publish_to_dht/5, query_dht_for_service/3, remove_from_dht/3]).

publish_to_dht(Dht, ServiceId, ProviderInfo, TTL, _K) ->
    Provider = ProviderInfo#{ttl => TTL, advertised_at => erlang:system_time(second)},
    dht(fun() -> old_macula_routing_server:store(Dht, key(ServiceId), Provider) end).

query_dht_for_service(Dht, ServiceId, K) ->
    dht(fun() -> old_macula_routing_server:find_value(Dht, key(ServiceId), K) end).

remove_from_dht(Dht, ServiceId, NodeId) ->
    _ = dht(fun() -> old_macula_routing_server:delete_local(Dht, key(ServiceId), NodeId) end),
    ok.

key(ServiceId) ->
    crypto:hash(sha256, ServiceId).

dht(Fun) ->
    try Fun() catch exit:_ -> {error, dht_not_available} end.
