%% @doc EUnit tests of `macula_dht_log': the log lines of the NIF's runtime reach a `logger'
%% handler with the mapped level and the runtime's `target' in their metadata, and no domain (so
%% that OTP's default handler prints them); debug lines only once `logger' allows them; the process lives as long as the server that asked for it.
%%
%% This module is also the test's `logger' handler (`log/2'): it sends each event to the test
%% process.
-module(macula_dht_log_tests).

-include_lib("eunit/include/eunit.hrl").

-export([log/2, runtime_line/2]).

-define(HANDLER, macula_dht_log_tests_handler).
-define(LOOPBACK, {127, 0, 0, 1}).
%% Longest a line of the runtime may take to show up.
-define(WAIT_MS, 15000).

%% The handler's filter: the lines of the runtime, which carry its `target'.
runtime_line(#{meta := #{target := _}} = Event, _) -> Event;
runtime_line(_, _) -> stop.

%% The handler's callback.
log(#{level := Level, meta := Meta, msg := Msg}, #{config := #{pid := Pid}}) ->
    Pid ! {?HANDLER, Level, Meta, Msg},
    ok.

levels_are_mapped_test() ->
    ?assertEqual([error, warning, info, debug, debug],
                 [macula_dht_log:level(L) || L <- [error, warn, info, debug, trace]]).

%% The forwarder lives as long as the last process that asked for it.
the_process_follows_its_latest_owner_test() ->
    Parent = self(),
    %% Each asks when told to, then waits to be stopped.
    Owner = fun() -> receive ask -> Parent ! {self(), macula_dht_log:ensure_started()} end,
                     receive stop -> ok end
            end,
    A = spawn(Owner),
    B = spawn(Owner),
    try
        A ! ask,
        {ok, Log} = receive {A, Started} -> Started after ?WAIT_MS -> error(not_started) end,
        B ! ask,
        receive {B, Again} -> ?assertEqual({ok, Log}, Again)
        after ?WAIT_MS -> error(not_adopted)
        end,
        Monitor = erlang:monitor(process, Log),
        WatchA = erlang:monitor(process, A),
        A ! stop,
        receive {'DOWN', WatchA, process, A, _} -> ok end,
        %% Calls answered after A's exit: the process did not stop with A.
        ?assertEqual({error, unknown_request}, gen_server:call(Log, ping)),
        ?assertEqual({error, unknown_request}, gen_server:call(Log, ping)),
        B ! stop,
        receive {'DOWN', Monitor, process, Log, normal} -> ok after ?WAIT_MS -> error(not_stopped) end
    after
        exit(A, kill),
        exit(B, kill)
    end.

runtime_lines_reach_logger_test_() ->
    {timeout, 120, fun runtime_lines_reach_logger/0}.

runtime_lines_reach_logger() ->
    ok = logger:add_handler(?HANDLER, ?MODULE,
                            #{config => #{pid => self()}, level => all, filter_default => stop,
                              filters => [{macula_dht, {fun ?MODULE:runtime_line/2, []}}]}),
    %% A "peer" that never answers: the node's requests to it time out.
    {ok, Silent} = gen_udp:open(0, [{ip, ?LOOPBACK}, {active, false}]),
    {ok, SilentPort} = inet:port(Silent),
    catch gen_server:stop(macula_routing_server),
    {ok, Server} = macula_routing_server:start_link(auto, #{listen => {?LOOPBACK, 0},
                                                          bootstrap => [{?LOOPBACK, SilentPort}],
                                                          request_timeout_ms => 200}),
    unlink(Server),
    Log = whereis(macula_dht_log),
    try
        ?assert(is_pid(Log)),
        %% The failed request to the silent peer is a warning of the runtime.
        {Meta, Msg, Before} = await(fun(Level, _) -> Level =:= warning end),
        ?assertMatch(#{target := <<"macula_dht", _/binary>>, fields := #{}}, Meta),
        ?assertNot(maps:is_key(domain, Meta)),
        ?assertMatch({"macula_dht: ~ts~ts", [_, _]}, Msg),
        %% At logger's default level nothing below notice was forwarded: no debug or info line
        %% of the runtime came before or with it (the node's start is one).
        Levels = Before ++ [L || {L, _, _} <- flush()],
        ?assertEqual([], [L || L <- Levels, L =:= debug orelse L =:= info]),
        %% Once logger allows debug for the module, debug lines come (a lookup ends in one).
        ok = logger:set_module_level(macula_dht_log, debug),
        {DebugMeta, _, _} = await_with(fun() -> macula_routing_server:find_value(Server, <<"k">>, 1)
                                    end,
                                    fun(Level, _) -> Level =:= debug end),
        ?assertMatch(#{target := <<"macula_dht", _/binary>>}, DebugMeta)
    after
        logger:unset_module_level(macula_dht_log),
        Watch = is_pid(Log) andalso erlang:monitor(process, Log),
        catch gen_server:stop(Server),
        gen_udp:close(Silent),
        ok = logger:remove_handler(?HANDLER),
        %% The forwarder stops with the server that started it.
        Watch =:= false orelse
            receive {'DOWN', Watch, process, Log, _} -> true
            after ?WAIT_MS -> error(log_not_stopped)
            end
    end.

%% The first line of the runtime (one with a `target') that `Match(Level, Meta)' accepts:
%% `{Meta, Msg, LevelsOfTheLinesBefore}'.
await(Match) ->
    await_with(fun() -> ok end, Match).

%% Runs `Poke' every half second (to make the runtime log) until such a line comes.
await_with(Poke, Match) ->
    Deadline = erlang:monotonic_time(millisecond) + ?WAIT_MS,
    await_with(Poke, Match, Deadline, []).

await_with(Poke, Match, Deadline, Before) ->
    _ = Poke(),
    Now = erlang:monotonic_time(millisecond),
    Wait = min(500, max(0, Deadline - Now)),
    receive
        {?HANDLER, Level, #{target := _} = Meta, Msg} ->
            case Match(Level, Meta) of
                true -> {Meta, Msg, lists:reverse(Before)};
                false -> await_with(Poke, Match, Deadline, [Level | Before])
            end
    after Wait ->
        case Now >= Deadline of
            true -> error({no_matching_log_line, lists:reverse(Before), flush()});
            false -> await_with(Poke, Match, Deadline, Before)
        end
    end.

%% The runtime's lines still in the mailbox, as `{Level, Meta, Msg}'.
flush() ->
    receive
        {?HANDLER, Level, #{target := _} = Meta, Msg} -> [{Level, Meta, Msg} | flush()]
    after 0 ->
        []
    end.
