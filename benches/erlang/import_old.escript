#!/usr/bin/env escript
%% @doc Imports the OLD design from a real Macula checkout as the benchmark's baseline.
%%
%% Usage: import_old.escript <checkout> <out_ebin> <reference_dir>
%%
%% Finds `macula_routing_*.erl' and `macula_service_registry.erl' anywhere under the checkout
%% (skipping _build, .git, deps, test dirs and *_tests/*_test/*_SUITE modules), renames every
%% found module `M' to `old_M' (whole atoms only, in the sources and in the .hrl files they
%% include; -include lines only lose their path), and compiles them into <out_ebin> with the
%% checkout's include dirs. If the checkout has no service registry, the reference
%% old_macula_service_registry.erl from <reference_dir> is compiled instead. On any failure:
%% one line on stderr starting with `import_old: error:' and exit status 1.

main([Checkout, OutEbin, RefDir]) ->
    Tmp = make_tmp(),
    Result = try import(filename:absname(Checkout), OutEbin, RefDir, Tmp)
             catch throw:{import_error, _, _} = Error -> Error
             after file:del_dir_r(Tmp)
             end,
    case Result of
        ok ->
            ok;
        {import_error, Fmt, Args} ->
            io:format(standard_error, "import_old: error: " ++ Fmt ++ "~n", Args),
            halt(1)
    end;
main(_) ->
    io:format(standard_error, "usage: import_old.escript <checkout> <out_ebin> <reference_dir>~n", []),
    halt(2).

import(Checkout, OutEbin, RefDir, Tmp) ->
    filelib:is_dir(Checkout) orelse fail("~s is not a directory", [Checkout]),
    Sources = find(Checkout, "^(macula_routing_[A-Za-z0-9_]+|macula_service_registry)\\.erl$"),
    Headers = find(Checkout, "\\.hrl$"),
    Modules = [filename:basename(F, ".erl") || F <- maps:keys(Sources)],
    lists:member("macula_routing_server", Modules)
        orelse fail("no macula_routing_server.erl under ~s", [Checkout]),
    IncDir = filename:join(Tmp, "include"),
    ok = filelib:ensure_dir(filename:join(IncDir, "x")),
    Rename = renamer(Modules),
    [write(filename:join(IncDir, Base), rewrite(Path, Rename, Headers))
     || {Base, Path} <- maps:to_list(Headers)],
    IncOpts = [{i, IncDir} | [{i, D} || D <- include_dirs(Checkout, Headers)]],
    [compile_one(write(filename:join(Tmp, "old_" ++ Base), rewrite(Path, Rename, Headers)),
                 Path, OutEbin, IncOpts)
     || {Base, Path} <- lists:sort(maps:to_list(Sources))],
    Registry = filename:join(RefDir, "old_macula_service_registry.erl"),
    lists:member("macula_service_registry", Modules)
        orelse compile_one(Registry, Registry, OutEbin, []),
    io:format("import_old: baseline from ~s: ~s~n",
              [Checkout, lists:join(" ", ["old_" ++ M || M <- lists:sort(Modules)])]),
    ok.

fail(Fmt, Args) ->
    throw({import_error, Fmt, Args}).

%% Basename => path of matching files; on duplicates the shortest path wins.
find(Root, Regex) ->
    Files = filelib:fold_files(Root, Regex, true, fun(F, Acc) -> [F | Acc] end, []),
    Kept = lists:sort([{length(F), F} || F <- Files, not skipped(Root, F)]),
    lists:foldl(fun({_, F}, Acc) ->
                    Base = filename:basename(F),
                    case Acc of
                        #{Base := _} -> Acc;
                        _ -> Acc#{Base => F}
                    end
                end, #{}, Kept).

skipped(Root, File) ->
    Rel = lists:nthtail(length(filename:split(Root)), filename:split(File)),
    Dirs = lists:droplast(Rel),
    Mod = filename:rootname(filename:basename(File)),
    lists:any(fun(D) -> lists:member(D, ["_build", ".git", "deps", "_checkouts", "test", "tests"])
              end, Dirs)
        orelse lists:any(fun(S) -> lists:suffix(S, Mod) end, ["_tests", "_test", "_SUITE"]).

include_dirs(Checkout, Headers) ->
    lists:usort([filename:join(Checkout, "include")
                 | [filename:dirname(P) || P <- maps:values(Headers)]]).

%% Module atom renamer: whole atoms only (an Erlang atom may hold letters, digits, _ and @).
renamer([]) ->
    fun(Line) -> Line end;
renamer(Modules) ->
    Alt = lists:join("|", lists:reverse(lists:sort(Modules))),
    {ok, Re} = re:compile(["(?<![A-Za-z0-9_@])(", Alt, ")(?![A-Za-z0-9_@])"]),
    fun(Line) -> re:replace(Line, Re, "old_\\1", [global]) end.

%% -include lines of headers found in the checkout point at the rewritten copy; other lines are
%% renamed.
rewrite(Path, Rename, Headers) ->
    {ok, Bin} = file:read_file(Path),
    {ok, IncRe} = re:compile("^\\s*-include(_lib)?\\(\\s*\"([^\"]*)\"\\s*\\)"),
    [[rewrite_line(Line, IncRe, Rename, Headers), "\n"]
     || Line <- binary:split(Bin, <<"\n">>, [global])].

rewrite_line(Line, IncRe, Rename, Headers) ->
    case re:run(Line, IncRe, [{capture, [2], list}]) of
        {match, [Inc]} ->
            Base = filename:basename(Inc),
            case maps:is_key(Base, Headers) of
                true -> ["-include(\"", Base, "\")."];
                false -> Line
            end;
        nomatch ->
            Rename(Line)
    end.

write(Path, IoData) ->
    ok = file:write_file(Path, IoData),
    Path.

compile_one(File, Original, OutEbin, IncOpts) ->
    case compile:file(File, [{outdir, OutEbin}, return_errors | IncOpts]) of
        {ok, _} -> ok;
        {error, Errors, _Warnings} -> fail("cannot compile ~s (from ~s): ~s",
                                           [filename:basename(File), Original, first(Errors)]);
        error -> fail("cannot compile ~s (from ~s)", [filename:basename(File), Original])
    end.

first([{File, [{Loc, Mod, Desc} | _]} | _]) ->
    io_lib:format("~s:~s: ~s", [filename:basename(File), loc(Loc), Mod:format_error(Desc)]);
first(Other) ->
    io_lib:format("~p", [Other]).

loc({Line, Col}) -> io_lib:format("~p:~p", [Line, Col]);
loc(Line) -> io_lib:format("~p", [Line]).

make_tmp() ->
    Dir = filename:join(os:getenv("TMPDIR", "/tmp"),
                        "macula_import_old_" ++ os:getpid() ++ "_"
                        ++ integer_to_list(erlang:unique_integer([positive]))),
    ok = filelib:ensure_dir(filename:join(Dir, "x")),
    Dir.
