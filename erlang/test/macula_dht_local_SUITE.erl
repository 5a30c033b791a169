%% @doc `macula_dht_local': a local mixed cluster starts as one mesh (a service advertised on a
%% BEAM node is found from a Rust node and the other way round), stops every OS process it
%% started, refuses bad options with `{error, Reason}', and leaves nothing running when a node
%% does not come up.
-module(macula_dht_local_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1]).
-export([beam_and_rust_see_each_other/1, bad_options_are_errors/1,
         failed_start_stops_what_started/1, nodes_stop_one_by_one/1]).

%% How long an advertisement may take to be found from the other node.
-define(FIND_WITHIN_MS, 10000).
-define(POLL_MS, 100).

all() ->
    [beam_and_rust_see_each_other, bad_options_are_errors, failed_start_stops_what_started,
     nodes_stop_one_by_one].

init_per_suite(Config) ->
    macula_cluster_harness:check_binary(Config).

end_per_suite(_Config) ->
    ok.

%%--------------------------------------------------------------------------------------------
%% Cases
%%--------------------------------------------------------------------------------------------

%% One BEAM VM and one rust-node: each finds what the other advertises; `stop/1' ends both OS
%% processes and removes the cluster's own directory.
beam_and_rust_see_each_other(_Config) ->
    Before = descendants(),
    {ok, Cluster, [Beam, Rust]} = macula_dht_local:start(options(#{beam => 1, rust => 1})),
    Dir = macula_dht_local:dir(Cluster),
    try
        ?assertEqual(lists:sort([OsPid || #{os_pid := OsPid} <- [Beam, Rust]]),
                     descendants() -- Before),
        ?assertMatch(#{kind := beam, name := "beam-1", id := <<_:256>>, peer := _}, Beam),
        ?assertMatch(#{kind := rust, name := "rust-1", id := <<_:256>>, ctl := _}, Rust),
        ?assertEqual([Beam, Rust], macula_dht_local:nodes(Cluster)),
        ?assert(lists:all(fun macula_dht_local:is_alive/1, [Beam, Rust])),
        ok = macula_dht_local:advertise(Beam, <<"local.beam">>, <<"https://beam:1">>, 60),
        ok = macula_dht_local:advertise(Rust, <<"local.rust">>, <<"https://rust:1">>, 60),
        ?assertEqual([maps:get(id, Beam)], found(Rust, <<"local.beam">>)),
        ?assertEqual([maps:get(id, Rust)], found(Beam, <<"local.rust">>)),
        ?assertMatch({ok, #{peers := 1, joined := true}}, macula_dht_local:stats(Beam)),
        ?assertMatch({ok, #{peers := 1, joined := true}}, macula_dht_local:stats(Rust)),
        ?assertEqual({ok, []}, macula_dht_local:discover(Rust, <<"local.nobody">>, 1))
    after
        ?assertEqual(ok, macula_dht_local:stop(Cluster))
    end,
    ?assertEqual([], [Name || #{name := Name} = N <- [Beam, Rust], macula_dht_local:is_alive(N)]),
    ?assertEqual(Before, descendants()),
    ?assertNot(filelib:is_dir(Dir)),
    ?assertNot(is_process_alive(Cluster)).

%% Bad options are refused before anything starts.
bad_options_are_errors(_Config) ->
    Before = descendants(),
    Refused = [{#{beam => -1}, {invalid_option, beam, -1}},
               {#{rust => 65}, {invalid_option, rust, 65}},
               {#{beam => 0, rust => 0}, {invalid_option, beam_and_rust, {0, 0}}},
               {#{k => 0}, {invalid_option, k, 0}},
               {#{ports => [4000]}, {invalid_option, ports, [4000]}},
               {#{ports => [4000, 4000]}, {invalid_option, ports, [4000, 4000]}},
               {#{ports => [0, 4000]}, {invalid_option, ports, [0, 4000]}},
               {#{rust_node => "/nonexistent/rust-node"},
                {invalid_option, rust_node, "/nonexistent/rust-node"}},
               {#{start_timeout_ms => 0}, {invalid_option, start_timeout_ms, 0}},
               {#{code_path => not_a_list}, {invalid_option, code_path, not_a_list}},
               {#{bogus => 1}, {unknown_option, bogus}}],
    ?assertEqual([], [{Options, Got} || {Options, Reason} <- Refused,
                                        Got <- [macula_dht_local:start(options(Options))],
                                        Got =/= {error, Reason}]),
    ?assertEqual({error, {invalid_options, []}}, macula_dht_local:start([])),
    {ok, Cluster} = macula_dht_local:new(#{rust_node => rust_node()}),
    try
        ?assertEqual({error, {invalid_name, "a/b"}},
                     macula_dht_local:start_rust(Cluster, "a/b", #{})),
        ?assertEqual({error, {invalid_name, ""}}, macula_dht_local:start_beam(Cluster, "", #{})),
        ?assertEqual({error, {invalid_option, listen, "nowhere"}},
                     macula_dht_local:start_rust(Cluster, "r", #{listen => "nowhere"})),
        ?assertEqual({error, {invalid_option, bootstrap, [42]}},
                     macula_dht_local:start_beam(Cluster, "b", #{bootstrap => [42]})),
        ?assertEqual({error, {unknown_option, port}},
                     macula_dht_local:start_rust(Cluster, "r", #{port => 1})),
        {ok, Rust} = macula_dht_local:start_rust(Cluster, "r", #{}),
        ?assertEqual({error, {name_taken, "r"}}, macula_dht_local:start_beam(Cluster, "r", #{})),
        ?assertEqual({error, {invalid_signal, "BOGUS"}}, macula_dht_local:signal(Rust, "BOGUS")),
        ?assertEqual({error, {not_executable, "/nonexistent"}},
                     macula_dht_local:command(Cluster, "/nonexistent", [], 1000)),
        ?assertMatch({error, {invalid_advertisement, _, _, _}},
                     macula_dht_local:advertise(Rust, <<"s">>, <<"e">>, 0))
    after
        ok = macula_dht_local:stop(Cluster)
    end,
    ?assertEqual(Before, descendants()).

%% A node that does not come up (its port is taken) fails the start, and the nodes started
%% before it are stopped: no VM or rust-node of the cluster is left.
failed_start_stops_what_started(_Config) ->
    Before = descendants(),
    {ok, Taken} = gen_udp:open(0, [{ip, {127, 0, 0, 1}}]),
    {ok, TakenPort} = inet:port(Taken),
    try
        Ports = [macula_dht_local:free_port(), TakenPort],
        ?assertMatch({error, {start_failed, "rust-2", {exited, 1, _}}},
                     macula_dht_local:start(options(#{beam => 0, rust => 2, ports => Ports}))),
        ?assertEqual(Before, descendants()),
        ?assertMatch({error, {start_failed, "beam-2", {beam_start, _}}},
                     macula_dht_local:start(options(#{beam => 2, rust => 0, ports => Ports}))),
        ?assertEqual(Before, descendants()),
        %% A node that exits at once fails the start at once.
        {Us, Failed} = timer:tc(macula_dht_local, start,
                                [options(#{rust_node => "/bin/false"})]),
        ?assertMatch({error, {start_failed, "rust-1", {exited, 1, _}}}, Failed),
        ?assert(Us < 5000000)
    after
        gen_udp:close(Taken)
    end,
    ?assertEqual(Before, descendants()).

%% `stop_node/1' ends one node by its id; the others keep running until `stop/1'. A Rust node
%% killed from outside is reported by `stop/1'; its log says how it ended.
nodes_stop_one_by_one(_Config) ->
    {ok, Cluster, [B1, R1, B2, R2]} = macula_dht_local:start(options(#{beam => 2, rust => 2})),
    try
        ?assertEqual(["beam-1", "rust-1", "beam-2", "rust-2"],
                     [Name || #{name := Name} <- macula_dht_local:nodes(Cluster)]),
        ok = macula_dht_local:stop_node(R1),
        ok = macula_dht_local:stop_node(B1),
        ?assertNot(macula_dht_local:is_alive(R1)),
        ?assertNot(macula_dht_local:is_alive(B1)),
        ?assertEqual({error, {no_such_node, "rust-1"}}, macula_dht_local:stop_node(R1)),
        ?assert(macula_dht_local:is_alive(B2) andalso macula_dht_local:is_alive(R2)),
        ok = macula_dht_local:signal(R2, "KILL"),
        wait_gone(R2)
    after
        Stopped = macula_dht_local:stop(Cluster),
        ?assertEqual({error, [{"rust-2", exited_before_stop}]}, Stopped)
    end,
    ?assertNot(macula_dht_local:is_alive(B2)).

%%--------------------------------------------------------------------------------------------
%% Helpers
%%--------------------------------------------------------------------------------------------

options(Options) ->
    maps:merge(#{rust_node => rust_node(), start_timeout_ms => 20000}, Options).

rust_node() ->
    macula_cluster_harness:rust_node_binary().

%% The provider ids `Node' finds for `Service', once it finds any (bounded).
found(Node, Service) ->
    found(Node, Service, erlang:monotonic_time(millisecond) + ?FIND_WITHIN_MS).

found(Node, Service, Deadline) ->
    case macula_dht_local:discover(Node, Service, 1) of
        {ok, [_ | _] = Ids} ->
            Ids;
        Other ->
            case erlang:monotonic_time(millisecond) >= Deadline of
                true -> ct:fail({not_found, maps:get(name, Node), Service, Other});
                false -> timer:sleep(?POLL_MS), found(Node, Service, Deadline)
            end
    end.

wait_gone(Node) ->
    macula_cluster_harness:wait_until({gone, maps:get(name, Node)},
                                      fun() ->
                                              case macula_dht_local:is_alive(Node) of
                                                  false -> {ok, gone};
                                                  true -> {wait, alive}
                                              end
                                      end, 5000).

%% The VMs and rust-nodes this VM has started (its OS descendants running beam.smp or
%% rust-node), as a sorted list of OS pids.
descendants() ->
    Rows = [string:lexemes(Line, " ") || Line <- string:lexemes(os:cmd("ps -e -o pid=,ppid=,comm="),
                                                               "\n")],
    Procs = [{list_to_integer(Pid), list_to_integer(Parent), Comm}
             || [Pid, Parent, Comm | _] <- Rows],
    lists:sort([Pid || {Pid, _, Comm} <- Procs, lists:member(Comm, ["beam.smp", "rust-node"]),
                       is_descendant(Pid, list_to_integer(os:getpid()), Procs)]).

is_descendant(Pid, Ancestor, Procs) ->
    case lists:keyfind(Pid, 1, Procs) of
        {_, Ancestor, _} -> true;
        {_, Parent, _} when Parent > 1 -> is_descendant(Parent, Ancestor, Procs);
        _ -> false
    end.
