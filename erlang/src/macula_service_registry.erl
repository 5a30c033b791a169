%% @doc The service registry a Macula node carries, plus its DHT helpers.
%%
%% The registry is a plain value threaded through its owner (usually a
%% gen_server's state): the services this node handles itself, and two
%% short-lived caches of DHT answers, one of service providers and one of
%% pub/sub subscribers. It is a map, but callers must treat it as opaque.
%%
%% Configuration is in seconds; entries keep their times in monotonic
%% milliseconds. Every entry (local service or cache entry) has a lifetime
%% and is expired once its age reaches it (age >= lifetime), so a lifetime
%% of 0 expires at once, which keeps tests free of sleeps.
%%
%% The DHT helpers publish, query and remove providers under
%% `sha256(ServiceId)' through `macula_routing_server'. They first check
%% that the DHT process is alive and also treat an exit meaning "that
%% process is gone" during the call as the DHT being unavailable. Call
%% timeouts and other exits propagate.
-module(macula_service_registry).

-export([new/0, new/1]).
-export([advertise_local/4, unadvertise_local/2, get_local_handler/2,
         list_local_services/1, prune_expired_local_services/1]).
-export([discover_service/2, discover_service/3, cache_service/4, prune_expired/1,
         clear_cache/1]).
-export([discover_subscribers/2, cache_subscribers/4, prune_expired_subscribers/1,
         clear_subscriber_cache/1]).
-export([publish_to_dht/5, query_dht_for_service/3, remove_from_dht/3, service_key/1]).

-export_type([registry/0, service_id/0, options/0, dht/0]).

-define(DEFAULTS, #{default_ttl => 300, cache_ttl => 60, service_ttl => 300}).

-type service_id() :: binary().
-type seconds() :: non_neg_integer().
-type options() :: #{default_ttl => seconds(), cache_ttl => seconds(),
                     service_ttl => seconds(), atom() => term()}.
-type dht() :: pid() | atom().
-type entry() :: #{value := term(), stamp := integer(), lifetime := non_neg_integer()}.
-type table() :: local_services | services | subscribers.
-opaque registry() :: #{default_ttl := seconds(),
                        cache_ttl := seconds(),
                        service_ttl := seconds(),
                        table() => #{binary() => entry()}}.

%%====================================================================
%% Construction
%%====================================================================

-spec new() -> registry().
new() ->
    new(#{}).

%% @doc Options (seconds): `default_ttl' (300; the advertising TTL the owner
%% uses when it has none, carried for it), `cache_ttl' (60; the longest a
%% DHT answer is cached), `service_ttl' (300; how long a local
%% advertisement lives unless refreshed). Unknown keys are ignored; a value
%% that is not a non-negative integer raises `badarg'.
-spec new(options()) -> registry().
new(Opts) when is_map(Opts) ->
    Config = maps:map(fun(Name, Default) -> seconds_option(Name, Default, Opts) end,
                      ?DEFAULTS),
    Config#{local_services => #{}, services => #{}, subscribers => #{}}.

-spec seconds_option(atom(), seconds(), options()) -> seconds().
seconds_option(Name, Default, Opts) ->
    case maps:get(Name, Opts, Default) of
        Seconds when is_integer(Seconds), Seconds >= 0 -> Seconds;
        _ -> erlang:error(badarg, [Opts])
    end.

%%====================================================================
%% Local services
%%====================================================================

%% @doc Registers the handler for a service this node serves. Advertising
%% an id again replaces handler and metadata and restarts its lifetime.
-spec advertise_local(registry(), service_id(), function(), map()) -> registry().
advertise_local(Registry, ServiceId, Handler, Metadata)
  when is_binary(ServiceId), is_function(Handler), is_map(Metadata) ->
    #{service_ttl := TTL} = Registry,
    Service = #{handler => Handler, metadata => Metadata},
    put_entry(local_services, Registry, ServiceId, Service, TTL).

-spec unadvertise_local(registry(), service_id()) -> registry().
unadvertise_local(Registry, ServiceId) ->
    drop_entry(local_services, Registry, ServiceId).

%% @doc The handler of a local service, expired or not (pruning is the
%% owner's call, via `prune_expired_local_services/1').
-spec get_local_handler(registry(), service_id()) -> {ok, function()} | not_found.
get_local_handler(#{local_services := Services}, ServiceId) ->
    case maps:find(ServiceId, Services) of
        {ok, #{value := #{handler := Handler}}} -> {ok, Handler};
        error -> not_found
    end.

%% @doc Ids of the local services, sorted.
-spec list_local_services(registry()) -> [service_id()].
list_local_services(#{local_services := Services}) ->
    lists:sort(maps:keys(Services)).

%% @doc Removes local services advertised `service_ttl' seconds ago or more.
-spec prune_expired_local_services(registry()) -> {registry(), non_neg_integer()}.
prune_expired_local_services(Registry) ->
    prune(local_services, Registry).

%%====================================================================
%% Provider cache
%%====================================================================

-spec discover_service(registry(), service_id()) ->
          {ok, [map()], registry()} | {cache_miss, registry()}.
discover_service(Registry, ServiceId) ->
    discover_service(Registry, ServiceId, #{}).

%% @doc Cached providers of a service. `#{force_refresh => true}' always
%% misses (the entry is kept); an expired entry misses and is dropped.
-spec discover_service(registry(), service_id(), #{force_refresh => boolean()}) ->
          {ok, [map()], registry()} | {cache_miss, registry()}.
discover_service(Registry, ServiceId, Opts) when is_map(Opts) ->
    case maps:get(force_refresh, Opts, false) of
        true -> {cache_miss, Registry};
        _ -> lookup(services, Registry, ServiceId)
    end.

%% @doc Caches providers for min(TTL, cache_ttl) seconds, replacing any
%% earlier entry for the id.
-spec cache_service(registry(), service_id(), [map()], seconds()) -> registry().
cache_service(Registry, ServiceId, Providers, TTL) ->
    cache(services, Registry, ServiceId, Providers, TTL).

%% @doc Drops expired provider entries; returns how many were dropped.
-spec prune_expired(registry()) -> {registry(), non_neg_integer()}.
prune_expired(Registry) ->
    prune(services, Registry).

-spec clear_cache(registry()) -> registry().
clear_cache(Registry) ->
    clear(services, Registry).

%%====================================================================
%% Subscriber cache (same rules as the provider cache)
%%====================================================================

-spec discover_subscribers(registry(), binary()) ->
          {ok, [term()], registry()} | {cache_miss, registry()}.
discover_subscribers(Registry, Topic) ->
    lookup(subscribers, Registry, Topic).

-spec cache_subscribers(registry(), binary(), [term()], seconds()) -> registry().
cache_subscribers(Registry, Topic, Subscribers, TTL) ->
    cache(subscribers, Registry, Topic, Subscribers, TTL).

-spec prune_expired_subscribers(registry()) -> {registry(), non_neg_integer()}.
prune_expired_subscribers(Registry) ->
    prune(subscribers, Registry).

-spec clear_subscriber_cache(registry()) -> registry().
clear_subscriber_cache(Registry) ->
    clear(subscribers, Registry).

%%====================================================================
%% DHT helpers
%%====================================================================

%% @doc The DHT key of a service or topic: its raw 32-byte SHA-256.
-spec service_key(service_id()) -> <<_:256>>.
service_key(ServiceId) when is_binary(ServiceId) ->
    macula_dht_nif:sha256(ServiceId).

%% @doc Stores `ProviderInfo#{ttl => TTL, advertised_at => UnixSeconds}'
%% under the service key (the server replicates it to its own k closest
%% peers; `K' is accepted for compatibility and unused). Binary-keyed
%% `<<"ttl">>' and `<<"advertised_at">>' are replaced by the atom keys. A record
%% the store refuses (too large, over a limit) gives the store's reason.
-spec publish_to_dht(dht(), service_id(), map(), seconds(), pos_integer()) ->
          ok | {error, dht_not_available | {invalid_service_id, term()}
                     | {invalid_provider, term()} | {invalid_ttl, term()}
                     | macula_dht_nif:put_error()}.
publish_to_dht(Dht, ServiceId, ProviderInfo, TTL, _K)
  when is_binary(ServiceId), is_map(ProviderInfo), is_integer(TTL), TTL >= 0 ->
    Provider = stamp_provider(ProviderInfo, TTL),
    Key = service_key(ServiceId),
    with_dht(Dht, fun() -> macula_routing_server:store(Dht, Key, Provider) end,
             {error, dht_not_available});
publish_to_dht(_Dht, ServiceId, ProviderInfo, TTL, _K) ->
    first_error([{is_binary(ServiceId), {invalid_service_id, ServiceId}},
                 {is_map(ProviderInfo), {invalid_provider, ProviderInfo}},
                 {false, {invalid_ttl, TTL}}]).

%% @doc Providers of a service found locally or on the network; `{ok, []}'
%% when there are none.
-spec query_dht_for_service(dht(), service_id(), pos_integer()) ->
          {ok, [map()]} | {error, dht_not_available | {invalid_service_id, term()}
                                | {invalid_k, term()} | term()}.
query_dht_for_service(Dht, ServiceId, K) when is_binary(ServiceId), is_integer(K), K > 0 ->
    Key = service_key(ServiceId),
    with_dht(Dht, fun() -> query_result(macula_routing_server:find_value(Dht, Key, K)) end,
             {error, dht_not_available});
query_dht_for_service(_Dht, ServiceId, K) ->
    first_error([{is_binary(ServiceId), {invalid_service_id, ServiceId}},
                 {false, {invalid_k, K}}]).

%% @doc Removes this node's provider record of a service from the DHT
%% process. `ok' also when no DHT is running: there is nothing to remove.
-spec remove_from_dht(dht(), service_id(), binary()) ->
          ok | {error, {invalid_service_id, term()} | {invalid_node_id, term()}}.
remove_from_dht(Dht, ServiceId, NodeId) when is_binary(ServiceId), is_binary(NodeId) ->
    Key = service_key(ServiceId),
    with_dht(Dht, fun() -> _ = macula_routing_server:delete_local(Dht, Key, NodeId), ok end, ok);
remove_from_dht(_Dht, ServiceId, NodeId) ->
    first_error([{is_binary(ServiceId), {invalid_service_id, ServiceId}},
                 {false, {invalid_node_id, NodeId}}]).

%%====================================================================
%% Internal: entries and tables
%%====================================================================

-spec cache(services | subscribers, registry(), binary(), list(), seconds()) -> registry().
cache(Table, Registry, Key, Values, TTL)
  when is_binary(Key), is_list(Values), is_integer(TTL), TTL >= 0 ->
    #{cache_ttl := CacheTTL} = Registry,
    put_entry(Table, Registry, Key, Values, min(TTL, CacheTTL)).

-spec lookup(table(), registry(), binary()) -> {ok, term(), registry()} | {cache_miss, registry()}.
lookup(Table, Registry, Key) ->
    case maps:find(Key, maps:get(Table, Registry)) of
        {ok, Entry} -> lookup_entry(Entry, Table, Registry, Key);
        error -> {cache_miss, Registry}
    end.

-spec lookup_entry(entry(), table(), registry(), binary()) ->
          {ok, term(), registry()} | {cache_miss, registry()}.
lookup_entry(#{value := Value} = Entry, Table, Registry, Key) ->
    case is_expired(Entry, now_ms()) of
        false -> {ok, Value, Registry};
        true -> {cache_miss, drop_entry(Table, Registry, Key)}
    end.

-spec put_entry(table(), registry(), binary(), term(), seconds()) -> registry().
put_entry(Table, Registry, Key, Value, LifetimeSeconds) ->
    Entry = #{value => Value, stamp => now_ms(), lifetime => LifetimeSeconds * 1000},
    maps:update_with(Table, fun(Entries) -> Entries#{Key => Entry} end, Registry).

-spec drop_entry(table(), registry(), binary()) -> registry().
drop_entry(Table, Registry, Key) ->
    maps:update_with(Table, fun(Entries) -> maps:remove(Key, Entries) end, Registry).

-spec prune(table(), registry()) -> {registry(), non_neg_integer()}.
prune(Table, Registry) ->
    Now = now_ms(),
    Entries = maps:get(Table, Registry),
    Live = maps:filter(fun(_Key, Entry) -> not is_expired(Entry, Now) end, Entries),
    {Registry#{Table := Live}, maps:size(Entries) - maps:size(Live)}.

-spec clear(table(), registry()) -> registry().
clear(Table, Registry) ->
    Registry#{Table := #{}}.

-spec is_expired(entry(), integer()) -> boolean().
is_expired(#{stamp := Stamp, lifetime := Lifetime}, Now) ->
    Now - Stamp >= Lifetime.

-spec now_ms() -> integer().
now_ms() ->
    erlang:monotonic_time(millisecond).

%%====================================================================
%% Internal: DHT calls
%%====================================================================

%% The first failing {Valid, Reason} check of arguments the function head refused.
-spec first_error([{boolean(), Reason}, ...]) -> {error, Reason}.
first_error([{true, _Reason} | Checks]) -> first_error(Checks);
first_error([{false, Reason} | _Checks]) -> {error, Reason}.

%% A dead pid or an unregistered name shows as a `noproc' exit from the call itself, so there is
%% no separate liveness check (it could go stale before the call anyway).
-spec with_dht(Dht :: term(), fun(() -> Result), Unavailable) -> Result | Unavailable.
with_dht(Dht, Call, Unavailable) when is_pid(Dht); is_atom(Dht) ->
    try
        Call()
    catch
        exit:{Reason, _Call} = Exit:Stack ->
            case is_gone(Reason) of
                true -> Unavailable;
                false -> erlang:raise(exit, Exit, Stack)
            end
    end;
with_dht(_Dht, _Call, Unavailable) ->
    Unavailable.

-spec is_gone(term()) -> boolean().
is_gone(noproc) -> true;
is_gone(normal) -> true;
is_gone(shutdown) -> true;
is_gone({shutdown, _}) -> true;
is_gone({nodedown, _}) -> true;
is_gone(_) -> false.

-spec stamp_provider(map(), seconds()) -> map().
stamp_provider(ProviderInfo, TTL) ->
    Provider = case is_map_key(<<"ttl">>, ProviderInfo) orelse is_map_key(<<"advertised_at">>, ProviderInfo) of
                   true -> maps:without([<<"ttl">>, <<"advertised_at">>], ProviderInfo);
                   false -> ProviderInfo
               end,
    Provider#{ttl => TTL, advertised_at => erlang:system_time(second)}.

-spec query_result({ok, [map()]} | {error, term()}) -> {ok, [map()]} | {error, term()}.
query_result({ok, Providers}) when is_list(Providers) -> {ok, Providers};
query_result({error, not_found}) -> {ok, []};
query_result({error, _Reason} = Error) -> Error.
