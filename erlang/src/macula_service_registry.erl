%% @doc The service registry a Macula node carries, plus its DHT helpers.
%%
%% The registry is a plain value threaded through its owner (usually a
%% gen_server's state): the services this node handles itself, and two
%% short-lived caches of DHT answers, one of service providers and one of
%% pub/sub subscribers. It is a map with the old registry's keys, which
%% existing callers match on: `local_services', `cache' (the providers),
%% `subscriber_cache', `default_ttl', `cache_ttl' and `service_ttl'; the keys
%% of `pick/3' and `report_failure/3' (`dht', `rtt', `failure_backoff_ms',
%% `rotations', `failures') come beside them. What the three tables hold per
%% id is this module's own.
%%
%% Configuration is in seconds; entries keep their times in monotonic
%% milliseconds. Every entry (local service or cache entry) has a lifetime
%% and is expired once its age reaches it (age >= lifetime), so a lifetime
%% of 0 expires at once, which keeps tests free of sleeps.
%%
%% The DHT helpers publish, query and remove providers under
%% `sha256(ServiceId)' through `macula_routing_server'. They treat an exit
%% meaning "that process is gone" during the call as the DHT being
%% unavailable. Call timeouts and other exits propagate.
%%
%% Picking a provider (`pick/3') reads the provider cache, filling it from
%% the registry's DHT on a miss. A caller that could not reach a provider
%% reports it (`report_failure/3'): `pick/3' then skips it for a back-off,
%% and `call_with_failover/4' does both for one call.
-module(macula_service_registry).

-export([new/0, new/1]).
-export([advertise_local/4, unadvertise_local/2, get_local_handler/2,
         list_local_services/1, prune_expired_local_services/1]).
-export([discover_service/2, discover_service/3, cache_service/4, prune_expired/1,
         clear_cache/1]).
-export([discover_subscribers/2, cache_subscribers/4, prune_expired_subscribers/1,
         clear_subscriber_cache/1]).
-export([publish_to_dht/5, query_dht_for_service/3, remove_from_dht/3, service_key/1]).
-export([pick/3, report_failure/3, call_with_failover/4]).

-export_type([registry/0, service_id/0, options/0, dht/0, strategy/0, rtt_fun/0,
              failover_options/0]).

-define(DEFAULTS, #{default_ttl => 300, cache_ttl => 60, service_ttl => 300}).

-define(IS_STRATEGY(S),
        (S =:= round_robin orelse S =:= random orelse S =:= least_loaded orelse S =:= nearest)).
%% How many providers `pick/3' asks the DHT for.
-define(DHT_QUERY_K, 20).
%% A reported provider is first skipped this long (the `failure_backoff_ms' option)...
-define(FAILURE_BACKOFF_MS, 5000).
%% ...and each report while it is skipped doubles that, up to this many times the first back-off
%% (300 s by default).
-define(MAX_BACKOFF_FACTOR, 60).
%% Reported providers remembered per registry; the earliest report is forgotten first.
-define(MAX_FAILURES, 1024).
%% Round-robin counters kept per registry; when full they all start over.
-define(MAX_ROTATIONS, 1024).
%% `call_with_failover/4': providers tried per call, by default and at most.
-define(DEFAULT_TRIES, 3).
-define(MAX_TRIES, 16).

-type service_id() :: binary().
-type seconds() :: non_neg_integer().
-type options() :: #{default_ttl => seconds(), cache_ttl => seconds(),
                     service_ttl => seconds(), dht => dht(), rtt => rtt_fun(),
                     failure_backoff_ms => pos_integer(), atom() => term()}.
-type dht() :: pid() | atom().
-type strategy() :: round_robin | random | least_loaded | nearest.
%% The round-trip time from this node to the node `NodeId' (32 bytes), in microseconds.
-type rtt_fun() :: fun((NodeId :: binary()) -> {ok, non_neg_integer()} | unknown).
-type failover_options() :: #{strategy => strategy(), tries => pos_integer(), atom() => term()}.
-type provider() :: map().
-type entry() :: #{value := term(), stamp := integer(), lifetime := non_neg_integer()}.
-type table() :: local_services | cache | subscriber_cache.
%% A reported provider: skipped until `until' (ms) unless re-advertised after `advertised_at'.
-type failure() :: #{until := integer(), backoff := pos_integer(), advertised_at := term(),
                     reported := integer()}.
-type failures() :: #{{service_id(), NodeId :: binary()} => failure()}.
%% A provider's place in `least_loaded' or `nearest' order: smaller first, unknown last.
-type rank() :: number() | infinity.
%% A provider's place in the stable order of a service's providers, from 0.
-type place() :: non_neg_integer().
-type registry() :: #{local_services := #{service_id() => entry()},
                      cache := #{service_id() => entry()},
                      subscriber_cache := #{binary() => entry()},
                      default_ttl := seconds(),
                      cache_ttl := seconds(),
                      service_ttl := seconds(),
                      dht := dht(),
                      rtt := rtt_fun(),
                      failure_backoff_ms := pos_integer(),
                      rotations := #{service_id() => place()},
                      failures := failures()}.

%%====================================================================
%% Construction
%%====================================================================

-spec new() -> registry().
new() ->
    new(#{}).

%% @doc Options (seconds): `default_ttl' (300; the advertising TTL the owner
%% uses when it has none, carried for it), `cache_ttl' (60; the longest a
%% DHT answer is cached), `service_ttl' (300; how long a local
%% advertisement lives unless refreshed); a value that is not a
%% non-negative integer raises `badarg'.
%%
%% Options of `pick/3', each raising `badarg' when invalid: `dht' (a pid or
%% registered name, default `macula_routing_server'; where a cache miss
%% is looked up), `rtt' (an `rtt_fun()' giving the round-trip time to a
%% node, for the `nearest' strategy; default: `macula_routing_server:rtt/2'
%% of `dht', its errors counting as `unknown'), `failure_backoff_ms' (a
%% positive integer, default 5000; how long a reported provider is first
%% skipped, the longest back-off being 60 times that). Unknown keys are
%% ignored.
-spec new(options()) -> registry().
new(Opts) when is_map(Opts) ->
    Config = maps:map(fun(Name, Default) -> option(Name, Default, fun is_seconds/1, Opts) end,
                      ?DEFAULTS),
    Dht = option(dht, macula_routing_server, fun is_dht/1, Opts),
    Config#{local_services => #{}, cache => #{}, subscriber_cache => #{},
            dht => Dht,
            rtt => option(rtt, default_rtt(Dht), fun(Rtt) -> is_function(Rtt, 1) end, Opts),
            failure_backoff_ms => option(failure_backoff_ms, ?FAILURE_BACKOFF_MS,
                                         fun(Ms) -> is_integer(Ms) andalso Ms > 0 end, Opts),
            rotations => #{}, failures => #{}}.

%% The option `Name' of `Opts', or `Default'; `badarg' when `IsValid' refuses it.
-spec option(atom(), T, fun((term()) -> boolean()), options()) -> T.
option(Name, Default, IsValid, Opts) ->
    Value = maps:get(Name, Opts, Default),
    case IsValid(Value) of
        true -> Value;
        false -> erlang:error(badarg, [Opts])
    end.

-spec is_seconds(term()) -> boolean().
is_seconds(Seconds) ->
    is_integer(Seconds) andalso Seconds >= 0.

-spec is_dht(term()) -> boolean().
is_dht(Dht) ->
    is_pid(Dht) orelse is_atom(Dht).

%% The round-trip time the DHT process measured; `unknown' also when it cannot tell.
-spec default_rtt(dht()) -> rtt_fun().
default_rtt(Dht) ->
    fun(NodeId) ->
            case with_dht(Dht, fun() -> macula_routing_server:rtt(Dht, NodeId) end, unknown) of
                {ok, Micros} -> {ok, Micros};
                _UnknownOrError -> unknown
            end
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
        _ -> lookup(cache, Registry, ServiceId)
    end.

%% @doc Caches providers for min(TTL, cache_ttl) seconds, replacing any
%% earlier entry for the id.
-spec cache_service(registry(), service_id(), [map()], seconds()) -> registry().
cache_service(Registry, ServiceId, Providers, TTL) ->
    cache(cache, Registry, ServiceId, Providers, TTL).

%% @doc Drops expired provider entries; returns how many were dropped.
-spec prune_expired(registry()) -> {registry(), non_neg_integer()}.
prune_expired(Registry) ->
    prune(cache, Registry).

-spec clear_cache(registry()) -> registry().
clear_cache(Registry) ->
    clear(cache, Registry).

%%====================================================================
%% Subscriber cache (same rules as the provider cache)
%%====================================================================

-spec discover_subscribers(registry(), binary()) ->
          {ok, [term()], registry()} | {cache_miss, registry()}.
discover_subscribers(Registry, Topic) ->
    lookup(subscriber_cache, Registry, Topic).

-spec cache_subscribers(registry(), binary(), [term()], seconds()) -> registry().
cache_subscribers(Registry, Topic, Subscribers, TTL) ->
    cache(subscriber_cache, Registry, Topic, Subscribers, TTL).

-spec prune_expired_subscribers(registry()) -> {registry(), non_neg_integer()}.
prune_expired_subscribers(Registry) ->
    prune(subscriber_cache, Registry).

-spec clear_subscriber_cache(registry()) -> registry().
clear_subscriber_cache(Registry) ->
    clear(subscriber_cache, Registry).

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
%% Picking a provider, and failover
%%====================================================================

%% @doc One provider of a service, chosen by `Strategy':
%% <ul>
%% <li>`round_robin': each in turn, per service, in a stable order (by `node_id'); the
%% turn of a skipped provider goes to the next one;</li>
%% <li>`random': uniformly at random;</li>
%% <li>`least_loaded': the smallest number under `load' in its `metadata'; providers
%% without one come last;</li>
%% <li>`nearest': the smallest round-trip time (the `rtt' option of `new/1') to the node
%% that published it, whose 32-byte id is its `node_id'; unknown times come last.</li>
%% </ul>
%% Ties go to the first in the stable order; binary keys (`<<"node_id">>') name the same
%% fields as atom keys. The providers are the cached ones; on a cache miss they are asked of
%% the `dht' process and cached for `cache_ttl' seconds. A provider reported with
%% `report_failure/3' is skipped; when every cached provider is, the DHT is asked once more
%% (refreshing the cache) before the answer is `{error, no_providers}'. A cached empty list
%% means no providers, and a DHT that is not running has none. An error comes without a
%% registry: the caller keeps the one it had.
-spec pick(registry(), service_id(), strategy()) ->
          {ok, provider(), registry()}
        | {error, no_providers | {invalid_service_id, term()} | {invalid_strategy, term()}}.
pick(Registry, ServiceId, Strategy) when is_binary(ServiceId), ?IS_STRATEGY(Strategy) ->
    case lookup(cache, Registry, ServiceId) of
        {ok, [], _Registry1} ->
            {error, no_providers};
        {ok, Providers, Registry1} ->
            case choose(Registry1, ServiceId, Providers, Strategy) of
                {error, no_providers} -> pick_fresh(Registry1, ServiceId, Strategy);
                Picked -> Picked
            end;
        {cache_miss, Registry1} ->
            pick_fresh(Registry1, ServiceId, Strategy)
    end;
pick(_Registry, ServiceId, Strategy) ->
    first_error([{is_binary(ServiceId), {invalid_service_id, ServiceId}},
                 {false, {invalid_strategy, Strategy}}]).

%% @doc Tells `pick/3' that the provider `NodeId' of a service could not be reached. It is
%% skipped for 5 seconds (the `failure_backoff_ms' option of `new/1'), or for twice its last
%% back-off when it is reported again while skipped, at most 300 seconds (60 times the first).
%% It is used again at once when the cache holds a later advertisement of it: a higher
%% `advertised_at' than the cached one when it was reported (a provider that was not cached
%% then waits out its back-off). At most 1024 reports are kept: adding one drops those
%% whose back-off is over, then the earliest one if still full.
-spec report_failure(registry(), service_id(), binary()) -> registry().
report_failure(Registry, ServiceId, NodeId) when is_binary(ServiceId), is_binary(NodeId) ->
    #{failures := Failures, failure_backoff_ms := First} = Registry,
    Now = now_ms(),
    Key = {ServiceId, NodeId},
    Advertised = cached_advertised_at(Registry, ServiceId, NodeId),
    Previous = maps:get(Key, Failures, none),
    Backoff = case is_backed_off(Previous, Advertised, Now) of
                  true -> min(2 * maps:get(backoff, Previous), ?MAX_BACKOFF_FACTOR * First);
                  false -> First
              end,
    Failure = #{until => Now + Backoff, backoff => Backoff, advertised_at => Advertised,
                reported => Now},
    Registry#{failures := add_failure(Key, Failure, Failures, Now)}.

%% @doc Calls `Fun(Provider)' with a provider from `pick/3' and, while that fails, with the
%% next one. A call fails when `Fun' returns `{error, Why}', returns anything else but
%% `{ok, Result}' (`Why' is `{bad_return, Value}') or raises (`Why' is `{Class, Reason}');
%% the provider is then reported with `report_failure/3'. Options: `strategy' (default
%% `round_robin'), `tries' (the most providers called, 1 to 16, default 3); other keys are
%% ignored.
%%
%% Answers `{ok, Result, Registry1}' from the first call that succeeded;
%% `{error, no_providers, Registry1}' when there was no provider to call;
%% `{error, {all_failed, Why}, Registry1}' when every call failed, with the last call's `Why'
%% (the tries are spent, or no provider is left); `{error, Reason, Registry}' for an invalid
%% argument: `{invalid_service_id, Id}', `{invalid_fun, Fun}' (not a fun of one argument) or
%% `{invalid_option, {Name, Value}}'. For example, connecting to the first of at most two
%% providers that accepts a TCP connection:
%% ```
%% Connect = fun(#{endpoint := Endpoint}) ->
%%                   [Host, Port] = string:split(binary_to_list(Endpoint), ":"),
%%                   gen_tcp:connect(Host, list_to_integer(Port), [binary], 1000)
%%           end,
%% case macula_service_registry:call_with_failover(Registry, <<"energy.home.get">>, Connect,
%%                                                 #{tries => 2}) of
%%     {ok, Socket, Registry1} -> use(Socket, Registry1);
%%     {error, Reason, Registry1} -> give_up(Reason, Registry1)
%% end'''
-spec call_with_failover(registry(), service_id(), fun((provider()) -> {ok, Result} | term()),
                         failover_options()) ->
          {ok, Result, registry()} | {error, term(), registry()}.
call_with_failover(Registry, ServiceId, Fun, Opts) when is_map(Opts) ->
    Strategy = maps:get(strategy, Opts, round_robin),
    Tries = maps:get(tries, Opts, ?DEFAULT_TRIES),
    Checks = [{is_binary(ServiceId), {invalid_service_id, ServiceId}},
              {is_function(Fun, 1), {invalid_fun, Fun}},
              {?IS_STRATEGY(Strategy), {invalid_option, {strategy, Strategy}}},
              {is_integer(Tries) andalso Tries >= 1 andalso Tries =< ?MAX_TRIES,
               {invalid_option, {tries, Tries}}}],
    case [Reason || {false, Reason} <- Checks] of
        [] -> try_providers(Registry, ServiceId, Fun, Strategy, Tries, none);
        [Reason | _] -> {error, Reason, Registry}
    end.

%%====================================================================
%% Internal: entries and tables
%%====================================================================

-spec cache(cache | subscriber_cache, registry(), binary(), list(), seconds()) -> registry().
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

%%====================================================================
%% Internal: picking and failover
%%====================================================================

%% Asks the DHT for the providers, bypassing the cache, caches its answer and picks from it.
-spec pick_fresh(registry(), service_id(), strategy()) ->
          {ok, provider(), registry()} | {error, no_providers}.
pick_fresh(Registry, ServiceId, Strategy) ->
    #{dht := Dht, cache_ttl := CacheTTL} = Registry,
    case query_dht_for_service(Dht, ServiceId, ?DHT_QUERY_K) of
        {ok, Providers} ->
            Cached = cache_service(Registry, ServiceId, Providers, CacheTTL),
            choose(Cached, ServiceId, Providers, Strategy);
        {error, _NotAvailable} ->
            {error, no_providers}
    end.

-spec choose(registry(), service_id(), [term()], strategy()) ->
          {ok, provider(), registry()} | {error, no_providers}.
choose(Registry, ServiceId, Providers, Strategy) ->
    case usable(Registry, ServiceId, Providers) of
        [] -> {error, no_providers};
        Usable -> choose_by(Strategy, Registry, ServiceId, Usable)
    end.

%% The providers that may be picked (maps, not skipped), each with its place in the stable
%% order: by `node_id', then by the whole term, whatever order the DHT gave.
-spec usable(registry(), service_id(), [term()]) -> [{place(), provider()}].
usable(#{failures := Failures}, ServiceId, Providers) ->
    Now = now_ms(),
    Sorted = lists:sort([{node_id(P), P} || P <- Providers, is_map(P)]),
    [{Place, P} || {Place, {NodeId, P}} <- lists:zip(lists:seq(0, length(Sorted) - 1), Sorted),
                   not is_backed_off(maps:get({ServiceId, NodeId}, Failures, none),
                                     field(advertised_at, P), Now)].

%% A service's round-robin counter is the place where its next turn starts: the first usable
%% provider from there, else (past the end) from the start. A skipped provider's turn goes to
%% the next one, and a changed set of providers keeps the rotation going.
-spec choose_by(strategy(), registry(), service_id(), [{place(), provider()}, ...]) ->
          {ok, provider(), registry()}.
choose_by(round_robin, #{rotations := Rotations} = Registry, ServiceId, Usable) ->
    Next = maps:get(ServiceId, Rotations, 0),
    {Place, Provider} = case lists:dropwhile(fun({At, _}) -> At < Next end, Usable) of
                            [Due | _] -> Due;
                            [] -> hd(Usable)
                        end,
    {ok, Provider, Registry#{rotations := set_turn(ServiceId, Place + 1, Rotations)}};
choose_by(random, Registry, _ServiceId, Usable) ->
    {_Place, Provider} = lists:nth(rand:uniform(length(Usable)), Usable),
    {ok, Provider, Registry};
choose_by(least_loaded, Registry, _ServiceId, Usable) ->
    {ok, first_by(fun load_rank/1, Usable), Registry};
choose_by(nearest, #{rtt := Rtt} = Registry, _ServiceId, Usable) ->
    {ok, first_by(fun(P) -> rtt_rank(Rtt, P) end, Usable), Registry}.

%% Round-robin counters only spread the load: when too many services have one, all start over.
-spec set_turn(service_id(), pos_integer(), #{service_id() => place()}) ->
          #{service_id() => place()}.
set_turn(ServiceId, Turn, Rotations)
  when is_map_key(ServiceId, Rotations); map_size(Rotations) < ?MAX_ROTATIONS ->
    Rotations#{ServiceId => Turn};
set_turn(ServiceId, Turn, _Full) ->
    #{ServiceId => Turn}.

%% The first provider (in the stable order) of the smallest rank.
-spec first_by(fun((provider()) -> rank()), [{place(), provider()}, ...]) -> provider().
first_by(Rank, Usable) ->
    [{_Rank, First} | _] = lists:keysort(1, [{Rank(P), P} || {_Place, P} <- Usable]),
    First.

%% A number, or a binary holding one (as a `rust-node' advertiser's `--meta load=3' arrives).
-spec load_rank(provider()) -> rank().
load_rank(Provider) ->
    case field(load, field(metadata, Provider)) of
        Load when is_number(Load) -> Load;
        Load when is_binary(Load) -> number_in(Load);
        _ -> infinity
    end.

-spec number_in(binary()) -> rank().
number_in(Text) ->
    case {string:to_float(Text), string:to_integer(Text)} of
        {{Float, <<>>}, _} -> Float;
        {_, {Integer, <<>>}} -> Integer;
        _ -> infinity
    end.

%% Only a 32-byte `node_id' is a DHT node id, that of the provider's publisher.
-spec rtt_rank(rtt_fun(), provider()) -> rank().
rtt_rank(Rtt, Provider) ->
    case node_id(Provider) of
        <<_:256>> = NodeId -> known_rtt(Rtt(NodeId));
        _ -> infinity
    end.

-spec known_rtt(term()) -> rank().
known_rtt({ok, Micros}) when is_integer(Micros), Micros >= 0 -> Micros;
known_rtt(_Unknown) -> infinity.

%% Whether a report still holds: its back-off is not over and the provider, advertised at
%% `Advertised' now, was not advertised again since.
-spec is_backed_off(failure() | none, term(), integer()) -> boolean().
is_backed_off(none, _Advertised, _Now) ->
    false;
is_backed_off(#{until := Until, advertised_at := Reported}, Advertised, Now) ->
    Now < Until andalso not (is_number(Advertised) andalso is_number(Reported)
                             andalso Advertised > Reported).

%% The `advertised_at' of the cached provider `NodeId' (expired or not), else `undefined'.
-spec cached_advertised_at(registry(), service_id(), binary()) -> term().
cached_advertised_at(#{cache := Cache}, ServiceId, NodeId) ->
    #{value := Providers} = maps:get(ServiceId, Cache, #{value => []}),
    case [field(advertised_at, P) || P <- Providers, node_id(P) =:= NodeId] of
        [Advertised | _] -> Advertised;
        [] -> undefined
    end.

%% Adds a report, first dropping those whose back-off is over, then the earliest if full.
-spec add_failure({service_id(), binary()}, failure(), failures(), integer()) -> failures().
add_failure(Key, Failure, Failures, Now) ->
    Live = maps:filter(fun(_Key, #{until := Until}) -> Now < Until end, Failures),
    Kept = case map_size(Live) >= ?MAX_FAILURES andalso not is_map_key(Key, Live) of
               true -> maps:remove(earliest(Live), Live);
               false -> Live
           end,
    Kept#{Key => Failure}.

-spec earliest(failures()) -> {service_id(), binary()}.
earliest(Failures) ->
    Reports = [{Reported, Key} || {Key, #{reported := Reported}} <- maps:to_list(Failures)],
    {_Reported, Earliest} = lists:min(Reports),
    Earliest.

%% Calls providers until one answers, `Tries' are spent or none is left; `Last' is the last
%% failure.
-spec try_providers(registry(), service_id(), fun((provider()) -> term()), strategy(),
                    non_neg_integer(), none | {failed, term()}) ->
          {ok, term(), registry()} | {error, term(), registry()}.
try_providers(Registry, _ServiceId, _Fun, _Strategy, 0, Last) ->
    give_up(Registry, Last);
try_providers(Registry, ServiceId, Fun, Strategy, Tries, Last) ->
    case pick(Registry, ServiceId, Strategy) of
        {ok, Provider, Registry1} ->
            case invoke(Fun, Provider) of
                {ok, Result} ->
                    {ok, Result, Registry1};
                {error, Why} ->
                    Reported = report(Registry1, ServiceId, Provider),
                    try_providers(Reported, ServiceId, Fun, Strategy, Tries - 1, {failed, Why})
            end;
        {error, no_providers} ->
            give_up(Registry, Last)
    end.

-spec give_up(registry(), none | {failed, term()}) -> {error, term(), registry()}.
give_up(Registry, none) -> {error, no_providers, Registry};
give_up(Registry, {failed, Why}) -> {error, {all_failed, Why}, Registry}.

%% What `Fun(Provider)' gave: `{ok, Result}', or why it failed.
-spec invoke(fun((provider()) -> term()), provider()) -> {ok, term()} | {error, term()}.
invoke(Fun, Provider) ->
    try Fun(Provider) of
        {ok, Result} -> {ok, Result};
        {error, Why} -> {error, Why};
        Other -> {error, {bad_return, Other}}
    catch
        Class:Reason -> {error, {Class, Reason}}
    end.

%% Reports a provider that failed, when it has an id to be reported by.
-spec report(registry(), service_id(), provider()) -> registry().
report(Registry, ServiceId, Provider) ->
    case node_id(Provider) of
        NodeId when is_binary(NodeId) -> report_failure(Registry, ServiceId, NodeId);
        _None -> Registry
    end.

-spec node_id(term()) -> term().
node_id(Provider) ->
    field(node_id, Provider).

%% A provider's field under its atom or its binary key (maps from the old msgpack wire);
%% `undefined' when absent or when `Map' is not a map.
-spec field(atom(), term()) -> term().
field(Name, Map) when is_map(Map) ->
    case maps:find(Name, Map) of
        {ok, Value} -> Value;
        error -> maps:get(atom_to_binary(Name), Map, undefined)
    end;
field(_Name, _NotAMap) ->
    undefined.
