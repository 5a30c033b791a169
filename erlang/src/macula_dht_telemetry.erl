%% @doc `telemetry' events of `macula_routing_server', when the `telemetry' library is there.
%%
%% macula_dht does not depend on `telemetry': `detect/0' looks for it once, when the server
%% starts, and every function here takes what it found. With `none' nothing is measured or
%% sent. The module is called through a variable, so the application compiles and passes
%% Dialyzer without it. An event whose emission fails (the library or a handler raising) is
%% dropped, and the first such failure is logged, so that a handler cannot crash the server or a
%% caller. Handlers run in the emitting process, as `telemetry' runs them: they must be quick.
%%
%% The events, after `telemetry''s span conventions (`duration' in native time units):
%% <ul>
%% <li>`[macula_dht, lookup, stop]': a network lookup ended. Measurements `duration', `hops',
%% `providers' (how many were found); metadata `key' (the id looked up, 32 bytes), `kind'
%% (`find_value' or `find_node'), `timed_out', `queried', `failed'.</li>
%% <li>`[macula_dht, store, stop]': a store through the server ended. Measurement `duration';
%% metadata `key', `kind' (`local', or `replicated' for `store/3' in network mode) and
%% `result' (`ok' or `{error, Reason}').</li>
%% <li>`[macula_dht, peer, up]' and `[macula_dht, peer, down]': a peer entered or left the
%% routing table. Measurement `count' (1); metadata the peer's `#{node_id, address}'.</li>
%% <li>`[macula_dht, request, refused]': requests of peers this node refused since the last
%% event, read from the counters of `macula_routing_server:stats/1'. Measurement `count';
%% metadata `reason', the counter's name (`refused_quota', `bad_requests', ...).</li>
%% </ul>
%% docs/telemetry.md says when each is emitted.
-module(macula_dht_telemetry).

-export([detect/0, net_event/2, store/4, refusals/3]).

-export_type([telemetry/0, refusal_counts/0]).

%% The `telemetry' module when it is there, else `none'.
-type telemetry() :: module() | none.
%% The refusal counters as last reported.
-type refusal_counts() :: #{atom() => non_neg_integer()}.

%% The counters of `stats/1' that count requests of peers refused here.
-define(REFUSAL_COUNTERS, [refused_version, refused_forged, refused_wrong_publisher,
                           refused_stale, refused_replay, refused_quota, refused_rate,
                           bad_requests]).
%% Set once a failed emission was logged.
-define(FAILURE_LOGGED, {?MODULE, failure_logged}).

%% @doc The `telemetry' module if it can be loaded and has `execute/3', else `none'.
-spec detect() -> telemetry().
detect() ->
    case code:ensure_loaded(telemetry) of
        {module, Module} ->
            case erlang:function_exported(Module, execute, 3) of
                true -> Module;
                false -> none
            end;
        {error, _} ->
            none
    end.

%% @doc The event of a network event the NIF sent the server: a lookup summary or a peer going
%% up or down. Other events are not emitted.
-spec net_event(telemetry(), term()) -> ok.
net_event(none, _Event) ->
    ok;
net_event(Telemetry, {lookup, #{target := Key, elapsed_us := Micros, hops := Hops,
                                providers := Providers} = Summary}) ->
    Measurements = #{duration => erlang:convert_time_unit(Micros, microsecond, native),
                     hops => Hops, providers => Providers},
    Metadata = maps:with([kind, timed_out, queried, failed], Summary),
    execute(Telemetry, [macula_dht, lookup, stop], Measurements, Metadata#{key => Key});
net_event(Telemetry, {peer_up, NodeInfo}) when is_map(NodeInfo) ->
    execute(Telemetry, [macula_dht, peer, up], #{count => 1}, NodeInfo);
net_event(Telemetry, {peer_down, NodeInfo}) when is_map(NodeInfo) ->
    execute(Telemetry, [macula_dht, peer, down], #{count => 1}, NodeInfo);
net_event(_Telemetry, _Other) ->
    ok.

%% @doc Runs `Store' (a store of `Key') and returns its result, emitting its event. `closed'
%% (the server is gone, so nothing was stored) emits nothing.
-spec store(telemetry(), local | replicated, Key :: term(), fun(() -> Result)) -> Result.
store(none, _Kind, _Key, Store) ->
    Store();
store(Telemetry, Kind, Key, Store) ->
    Start = erlang:monotonic_time(),
    Result = Store(),
    Duration = erlang:monotonic_time() - Start,
    case Result of
        closed ->
            ok;
        _ ->
            execute(Telemetry, [macula_dht, store, stop], #{duration => Duration},
                    #{key => Key, kind => Kind, result => Result})
    end,
    Result.

%% @doc Emits one event per refusal counter of `Stats' that grew since `Seen' (the counts last
%% reported; `#{}' when none were: the counters start at zero with the node), and returns the
%% counts to pass next time.
-spec refusals(telemetry(), map(), refusal_counts()) -> refusal_counts().
refusals(none, _Stats, Seen) ->
    Seen;
refusals(Telemetry, Stats, Seen) ->
    Counts = maps:with(?REFUSAL_COUNTERS, Stats),
    maps:foreach(fun(Counter, Count) ->
                         case Count - maps:get(Counter, Seen, 0) of
                             New when New > 0 ->
                                 execute(Telemetry, [macula_dht, request, refused],
                                         #{count => New}, #{reason => Counter});
                             _None ->
                                 ok
                         end
                 end, Counts),
    Counts.

-spec execute(module(), [atom(), ...], map(), map()) -> ok.
execute(Telemetry, Event, Measurements, Metadata) ->
    try Telemetry:execute(Event, Measurements, Metadata) of
        _ -> ok
    catch
        Class:Reason ->
            log_failure(Event, Class, Reason)
    end.

%% The first failure only: a handler failing on every event would otherwise fill the log.
-spec log_failure([atom(), ...], atom(), term()) -> ok.
log_failure(Event, Class, Reason) ->
    case persistent_term:get(?FAILURE_LOGGED, false) of
        true ->
            ok;
        false ->
            persistent_term:put(?FAILURE_LOGGED, true),
            logger:warning("macula_dht: telemetry event ~w failed (~w:~0p); events that fail "
                           "are dropped, and only this first failure is logged",
                           [Event, Class, Reason])
    end.
