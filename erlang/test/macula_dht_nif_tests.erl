%% @doc The NIF loader fails loudly: without its shared library the module does not load, the
%% log says why, and `macula_routing_server:start_link/2' returns an error instead of falling
%% back to anything.
-module(macula_dht_nif_tests).

-include_lib("eunit/include/eunit.hrl").

missing_library_is_logged_and_refused_test_() ->
    {timeout, 60, fun missing_library_is_logged_and_refused/0}.

missing_library_is_logged_and_refused() ->
    %% A copy of the application's beams with an empty priv/: what a broken release looks like.
    Dir = filename:join(tmp_dir(), "macula_dht_no_nif_" ++ os:getpid()),
    try check_without_library(Dir)
    after file:del_dir_r(Dir)
    end.

check_without_library(Dir) ->
    Ebin = filename:join([Dir, "macula_dht", "ebin"]),
    ok = filelib:ensure_dir(filename:join([Dir, "macula_dht", "priv", "x"])),
    ok = filelib:ensure_dir(filename:join(Ebin, "x")),
    Own = filename:dirname(code:which(macula_routing_server)),
    [{ok, _} = file:copy(filename:join(Own, F), filename:join(Ebin, F))
     || F <- ["macula_dht_nif.beam", "macula_routing_server.beam", "macula_routing_config.beam",
              "macula_dht.app"]],
    Eval = "io:format(\"~p~n\", [macula_routing_server:start_link(<<1:256>>, #{})]), "
           "timer:sleep(200), halt().",
    Cmd = lists:flatten(io_lib:format("ERL_LIBS=~s ~s -noshell -eval '~s' 2>&1",
                                      [Dir, os:find_executable("erl"), Eval])),
    Out = os:cmd(Cmd),
    ?assertNotEqual(nomatch, string:find(Out, "macula_dht: cannot load the NIF")),
    ?assertNotEqual(nomatch, string:find(Out, "{error,{nif_not_loaded,on_load_failure}}")).

tmp_dir() ->
    case os:getenv("TMPDIR") of
        false -> "/tmp";
        D -> D
    end.
